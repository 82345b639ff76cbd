"""python -m tinymixer.data: NumPy arrays to a CIFAR-layout folder."""

import sys

from . import main

sys.exit(main())
