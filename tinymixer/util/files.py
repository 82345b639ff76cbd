"""Writing files safely: atomically, and with the permissions the user's umask asks for.

A file that a run rewrites (a checkpoint after every epoch, ``metrics.json``) is written to a temporary file in
the same folder, flushed to disk, and renamed over the old one: a crash or Ctrl-C while writing leaves the previous
version intact. ``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so the finished file is
given the mode an ordinary ``open(path, "w")`` would have given it (0666 minus the umask, usually 0644) before it
is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``hashlib``'s ``algorithm``), read a megabyte at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_file_mode() -> int:
    """0666 with the process's umask applied: the mode ``open(path, "w")`` gives a new file."""
    mask = os.umask(0)  # the only way to read the umask is to set it: put it straight back
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_open(path: Path | str, mode: str = "wb", suffix: str = ".tmp") -> Iterator[IO]:
    """``with atomic_open(path) as f: ...`` writes ``f`` to a temporary file beside ``path`` and renames it over
    ``path`` only when the block ends without an exception (after flushing it to disk); otherwise the temporary
    file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise

