"""Moved to ``tinymixer.util.plots`` (the helpers every layer uses live at the bottom of the package). This name keeps
working for one release, with a DeprecationWarning."""

import warnings

from ..util.plots import *  # noqa: F403
from ..util.plots import __doc__ as _doc  # noqa: F401

warnings.warn("tinymixer.tools.plots moved to tinymixer.util.plots; import it from there", DeprecationWarning,
              stacklevel=2)
