"""The README's and the docs' code runs as written; the README starts with the two commands and stays short."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = sorted((README.parent / "docs").glob("*.md"))


def test_the_python_examples_of_the_readme_and_the_docs_run():
    pages = [README, *DOCS]
    blocks = [(page, code) for page in pages for code in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]
    assert blocks
    for page, code in blocks:
        exec(compile(code, str(page), "exec"), {})


def test_the_readme_is_short_and_every_page_it_names_exists():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    linked = re.findall(r"\]\((docs/[^)#]+|lessons/[^)#]+)\)", text)
    assert {str(p.relative_to(README.parent)) for p in DOCS} <= set(linked)  # every page is linked
    assert all((README.parent / link).exists() for link in linked)


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
