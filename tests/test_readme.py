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


def markdown_fence_problems(text: str) -> list[str]:
    """Code fences that do not close as CommonMark closes them: inside a block, a line starting with ``` closes it
    only when nothing but spaces follows (```` ``` They import ...```` does not, and the page's next lines render
    as code), and every block opened must be closed."""
    problems, open_at = [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip(" ")
        if not stripped.startswith("```") or len(line) - len(stripped) > 3:
            continue
        if open_at is None:
            open_at = number
        elif stripped.rstrip() == "```":
            open_at = None
        else:
            problems.append(f"line {number}: a fence with text after it, inside the block opened at line {open_at}")
    if open_at is not None:
        problems.append(f"line {open_at}: a block never closed")
    return problems


def test_every_markdown_page_closes_its_code_blocks():
    root = README.parent
    pages = [p for p in root.rglob("*.md") if not {".venv", ".git", "node_modules"} & set(p.parts)]
    assert len(pages) > 10
    problems = {str(p.relative_to(root)): markdown_fence_problems(p.read_text()) for p in pages}
    assert {page: found for page, found in problems.items() if found} == {}
    assert markdown_fence_problems("```python\nx = 1\n``` They import it\nmore\n```\n")  # the check has teeth
    assert markdown_fence_problems("```bash\nls\n")
