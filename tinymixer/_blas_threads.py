"""Environment settings for the BLAS library's threads, set before NumPy loads its BLAS (this module imports nothing
that could load it: ``tinymixer/__init__.py`` imports it first).

A BLAS library's worker threads keep spinning for a while after every call before they sleep (OpenBLAS: about 2^28
cycles; Intel's OpenMP runtime, which MKL uses: 200 ms). Between the Mixer's many matrix multiplies, and while the
batch's shards run with BLAS held to one thread (``chunks.for_shards``), that spinning occupies the cores the work
needs: measured 10-20% of a 2-thread training step with OpenBLAS, 14-22% with MKL. So ask them to sleep at once. A
variable takes effect only if NumPy has not loaded its BLAS yet (import tinymixer first, or set it in the shell);
a value already set is kept.
"""

import os

BLAS_THREADS_SLEEP_AT_ONCE = {"OPENBLAS_THREAD_TIMEOUT": "4", "KMP_BLOCKTIME": "0"}

for name, value in BLAS_THREADS_SLEEP_AT_ONCE.items():
    os.environ.setdefault(name, value)
