"""Moved to ``tinymixer.util.files`` (the helpers every layer uses live at the bottom of the package). This name keeps
working for one release, with a DeprecationWarning."""

import warnings

from ..util.files import *  # noqa: F403
from ..util.files import __doc__ as _doc  # noqa: F401

warnings.warn("tinymixer.tools.files moved to tinymixer.util.files; import it from there", DeprecationWarning,
              stacklevel=2)
