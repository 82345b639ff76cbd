"""A training run as a program runs it (``examples/cifar10.py``): its options (``options``), what it is set up with
from them (``setup``: data, model, optimiser, schedule) and its state between steps and across resumes
(``state``). Above ``training`` and ``transfer``, which it uses; below the programs."""

from .._lazy import submodules

__getattr__ = submodules(__name__)  # this package's modules as attributes on first use
