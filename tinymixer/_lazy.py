"""A package's modules as its attributes on first use (PEP 562), so that ``import tinymixer as tm`` then
``tm.nn.layers`` or ``tm.training.train`` works without importing every module up front. Imports nothing."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType


def submodules(package: str) -> Callable[[str], ModuleType]:
    """A module ``__getattr__`` for ``package``: an unknown attribute is looked for as a module of the package."""

    def __getattr__(name: str) -> ModuleType:
        if name.startswith("__"):  # dunder look-ups (copy, pickle, pytest) are not modules
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{package}.{name}":  # the module exists but an import inside it failed
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
