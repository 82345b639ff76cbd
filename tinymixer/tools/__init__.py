"""The programs and their helpers: benchmarks, the self-check, command lines, atomic files, plots."""
