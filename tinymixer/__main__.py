"""``python -m tinymixer``: versions, backend, BLAS, threads and settings, then a self-check of a few seconds
(``tinymixer/selfcheck.py``; ``--help`` for the options)."""

import sys

from .selfcheck import main

sys.exit(main())
