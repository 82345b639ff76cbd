"""Write the Jupyter notebooks lessons/NN_*.ipynb from the lesson scripts lessons/NN_*.py.

    python lessons/make_notebooks.py            # (re)write every lesson's notebook
    python lessons/make_notebooks.py --check    # exit 1 if a committed notebook differs from what would be written

The scripts are the source; the notebooks are generated from them and committed without outputs, so that they open
on GitHub, in Colab and in Jupyter. A script is cut into cells at its ``# %%`` lines: a ``# %% [markdown]`` cell
becomes a markdown cell (each line's leading ``# `` removed), any other a code cell. Only the standard library is
used: the notebook is nbformat 4 JSON laid out as Jupyter writes it (sorted keys, one-space indent), with fixed
cell ids, so that the output depends on the script alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LESSONS_DIR = Path(__file__).resolve().parent
COMMAND = "python lessons/make_notebooks.py"


def lesson_scripts(folder: Path = LESSONS_DIR) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9]_*.py"))


def split_cells(source: str) -> list[tuple[str, list[str]]]:
    """The script as (kind, lines) cells, kind "markdown" or "code", in order; blank edge lines dropped."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if line.strip() == "# %% [markdown]" else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %%' line: {line!r}")
    result = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [uncomment(line) for line in lines]
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            result.append((kind, lines))
    return result


def uncomment(line: str) -> str:
    """A markdown line of the script without its comment mark: '# text' -> 'text', '#' or '' -> ''."""
    if not line.strip():
        return ""
    if line == "#" or line.startswith("# "):
        return line[2:]
    raise ValueError(f"a markdown cell's line must start with '# ', or be '#' or blank: {line!r}")


def notebook(script: Path) -> dict:
    """The nbformat 4 notebook (a JSON-ready dict) of one lesson script, without outputs."""
    cells = []
    for number, (kind, lines) in enumerate(split_cells(script.read_text(encoding="utf-8"))):
        source = [line + "\n" for line in lines[:-1]] + [lines[-1]]  # Jupyter's own layout: one string a line
        cell = {"cell_type": kind, "id": f"{script.stem[:2]}-{number:02d}", "metadata": {}, "source": source}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def notebook_text(script: Path) -> str:
    """The notebook file's exact text, as ``nbformat.write`` would write it."""
    return json.dumps(notebook(script), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def stale_notebooks(folder: Path = LESSONS_DIR) -> list[Path]:
    """The notebooks that are missing or differ from what their scripts generate."""
    stale = []
    for script in lesson_scripts(folder):
        path = script.with_suffix(".ipynb")
        if not path.exists() or path.read_text(encoding="utf-8") != notebook_text(script):
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_notebooks()
        for path in stale:
            print(f"out of date: {path.name} (run: {COMMAND})")
        return 1 if stale else 0
    for script in lesson_scripts():
        path = script.with_suffix(".ipynb")
        path.write_text(notebook_text(script), encoding="utf-8", newline="\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
