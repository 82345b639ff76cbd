"""``python -m tinymixer``: versions, backend, BLAS, threads and settings, then a self-check of a few seconds
(``tinymixer/tools/selfcheck.py``; ``--help`` for the options)."""

import sys

from .tools.selfcheck import main

sys.exit(main())
