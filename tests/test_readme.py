"""The README's code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})


def test_readme_starts_with_the_two_commands():
    first_lines = README.read_text().splitlines()[:6]
    assert any("python examples/cifar10.py" in line for line in first_lines)
    assert any('pip install -e ".[test]" && python -m pytest' in line for line in first_lines)
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest' in ci  # CI runs exactly the README's test command


def test_readme_says_at_the_top_how_to_get_the_cpu_build_of_pytorch():
    """Without it, `pip install -e ".[test]"` on a machine without a GPU pulls PyTorch's CUDA build (5.8 GB)."""
    top = "\n".join(README.read_text().splitlines()[:12])
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in top
