"""The package's layers hold: read from the source (every import, at the top of a module or inside a function),
each module imports only its own layer or the ones below it, and no modules import each other in a cycle. The
checker is shown to fail on a tree with an upward import planted in it, and on a planted cycle.

    util, backend, _lazy           helpers every layer may use (files, command lines, plots; the array backend;
                                   a package's modules as attributes on first use)
    chunks, flat                   how work is split; named arrays in one buffer
    nn                             the networks
    data                           data sets, images, permutations
    training                       optimisers, the step, checkpoints, augmentation, many processes
    transfer, exercises            pretrained models, few-shot, conversion; the learner's checked exercises
    trainer                        a training run as a program runs it: options, set-up, state and resume
    tinymixer                      the facade (`import tinymixer as tm`): the everyday names of the layers below
    tools                          the programs (benchmarks, self-check, GPU check), which may use the facade
    tinymixer.__main__             `python -m tinymixer` (the self-check)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tinymixer"

LAYERS = [("util", "backend", "_lazy"), ("chunks", "flat"), ("nn",), ("data",), ("training",),
          ("transfer", "exercises"), ("trainer",), ("",), ("tools",), ("__main__",)]


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def import_graph(root: Path, package: str = "tinymixer") -> dict[str, set[str]]:
    """Every module of the package under ``root`` and the package's modules it imports (relative imports
    resolved; ``from . import name`` counts as the module ``name`` where there is one)."""
    files = {module_name(p, root, package): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == package}
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                if module.split(".")[0] != package:
                    continue
                for alias in node.names:  # `from .. import backend`: the module tinymixer.backend
                    targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module)
        graph[name] = {t for t in targets if t != name}
    return graph


def layer_of(module: str, package: str = "tinymixer") -> int:
    rest = module[len(package) + 1:].split(".")[0] if module != package else ""
    for rank, names in enumerate(LAYERS):
        if rest in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add its subpackage to LAYERS (and to this test's docstring)")


def upward_imports(graph: dict[str, set[str]], package: str = "tinymixer") -> list[str]:
    for module in graph:  # every module has its place, importing or not
        layer_of(module, package)
    return sorted(f"{m} imports {t} (layer {layer_of(t, package)} above its {layer_of(m, package)})"
                  for m, targets in graph.items() for t in targets if layer_of(t, package) > layer_of(m, package))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# The package facade re-exports from every layer, and the facade's own modules import their subpackage's modules
# (nn/__init__ re-exporting nn.layers is not a cycle of concern when nn.layers does not import nn/__init__ back).


def test_every_module_imports_only_its_layer_or_below():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_no_modules_import_each_other_in_a_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_only_the_backend_imports_cupy():
    importers = sorted({str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                        for node in ast.walk(ast.parse(path.read_text()))
                        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "cupy" for a in node.names)
                        or isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cupy"})
    assert importers == ["backend.py"]


def test_the_checker_finds_a_planted_upward_import_and_a_planted_cycle(tmp_path):
    root = tmp_path / "tinymixer"
    for folder in ("nn", "training", "util"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("from . import nn\n")
    (root / "util" / "files.py").write_text("import os\n")
    (root / "nn" / "layers.py").write_text("from ..util.files import os\n")
    assert upward_imports(import_graph(root)) == [] and cycles(import_graph(root)) == []
    (root / "nn" / "layers.py").write_text("def f():\n    from ..training import optim\n")  # upward, lazily
    (root / "training" / "optim.py").write_text("from ..nn import layers\n")
    assert upward_imports(import_graph(root)) == [
        "tinymixer.nn.layers imports tinymixer.training.optim (layer 4 above its 2)"]
    assert cycles(import_graph(root)) == [["tinymixer.nn.layers", "tinymixer.training.optim"]]
    (root / "oddity").mkdir()
    (root / "oddity" / "__init__.py").write_text("")
    with pytest.raises(AssertionError, match="in no layer"):
        upward_imports(import_graph(root))


@pytest.mark.parametrize("old, new", [("tinymixer.tools.cli", "tinymixer.util.cli"),
                                      ("tinymixer.tools.files", "tinymixer.util.files"),
                                      ("tinymixer.tools.plots", "tinymixer.util.plots"),
                                      ("tinymixer.training.augment", "tinymixer.data.augment")])
def test_moved_modules_still_import_from_their_old_place_with_a_warning(old, new):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        old_module = importlib.import_module(old)
    new_module = importlib.import_module(new)
    public = [n for n, v in vars(new_module).items() if not n.startswith("_") and getattr(v, "__module__", "") == new]
    assert public and all(getattr(old_module, n) is getattr(new_module, n) for n in public)


def test_no_source_file_is_hidden_by_the_gitignore():
    """A package folder named like an ignored one (``runs/``: the training outputs) would be left out of every
    commit while working here: the clean checkout of CI would then miss it."""
    import shutil
    import subprocess

    root = PACKAGE.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(root)) for folder in ("tinymixer", "tests", "docs", "examples", "experiments",
                                                      "lessons") for p in (root / folder).rglob("*")
             if p.suffix in (".py", ".md", ".json") and "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=root, capture_output=True,
                             text=True).stdout.split()
    assert ignored == []
