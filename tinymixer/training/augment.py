"""Moved to ``tinymixer.data.augment`` (augmentation is part of the data pipeline). This name keeps working for one
release, with a DeprecationWarning."""

import warnings

from ..data.augment import *  # noqa: F403
from ..data.augment import __doc__ as _doc  # noqa: F401

warnings.warn("tinymixer.training.augment moved to tinymixer.data.augment; import it from there", DeprecationWarning,
              stacklevel=2)
