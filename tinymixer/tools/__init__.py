"""The programs and their helpers: benchmarks, the self-check, command lines, atomic files, plots."""

from .._lazy import submodules

__getattr__ = submodules(__name__)  # this package's modules as attributes on first use
