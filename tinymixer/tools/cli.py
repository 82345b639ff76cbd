"""Moved to ``tinymixer.util.cli`` (the helpers every layer uses live at the bottom of the package). This name keeps
working for one release, with a DeprecationWarning."""

import warnings

from ..util.cli import *  # noqa: F403
from ..util.cli import __doc__ as _doc  # noqa: F401

warnings.warn("tinymixer.tools.cli moved to tinymixer.util.cli; import it from there", DeprecationWarning,
              stacklevel=2)
