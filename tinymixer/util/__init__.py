"""The helpers every layer of the package may use, at the bottom of it: files written atomically with the user's
umask (``files``), what the command-line programs share (``cli``), figures (``plots``), the programs' opt-in
process tuning (``host``). They import nothing of tinymixer but ``backend``."""

from .._lazy import submodules

__getattr__ = submodules(__name__)  # this package's modules as attributes on first use
