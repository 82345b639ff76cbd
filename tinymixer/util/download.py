"""Downloading a large file over HTTP(S): a progress bar, resumed after a cut, never a half file under the real name.

``fetch(url, part)`` writes the bytes to ``part`` (a ``.part`` file beside the destination). When ``part`` already
holds the first bytes of an earlier, cut-off transfer, it asks the server for the rest (an HTTP ``Range`` request)
and appends; a server that answers with the whole file instead starts it again. It returns the number of bytes the
server said the file has, after checking that ``part`` holds exactly that many. The caller verifies the contents
and renames ``part`` to the real name (``os.replace``), so that an interrupted download never leaves a file that
looks complete. Used by the pretrained weights (``transfer/weights.py``).
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20  # bytes per read


class DownloadError(OSError):
    """The transfer failed or was cut; ``offline`` is True when the server could not be reached at all, ``status``
    is the HTTP status of a server's refusal (404: no such file), else None. The bytes received so far stay in
    the ``.part`` file, and the next ``fetch`` resumes from them."""

    def __init__(self, message: str, offline: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.offline = offline
        self.status = status


def fetch(url: str, part: Path, label: str, progress: bool = True, timeout: float = 60.0) -> int:
    """Fetch ``url`` into ``part`` (resuming what is there); return the file's size in bytes as the server gave
    it. ``label`` names the file on the progress bar. Raises DownloadError."""
    from tqdm import tqdm

    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    try:
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the range starts at the end: the earlier transfer had every byte
            total = _total_from_range(exc.headers.get("Content-Range", ""))
            if total == have:
                return have
            part.unlink()  # not this file's bytes: start again
            return fetch(url, part, label, progress, timeout)
        raise DownloadError(f"{url}: the server answered {exc.code} {exc.reason}", status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason})", offline=True) from None
    except (ValueError, http.client.HTTPException) as exc:  # not a URL; not an HTTP server
        raise DownloadError(f"cannot fetch {url} ({type(exc).__name__}: {exc})") from None
    with response:
        content_range = response.headers.get("Content-Range", "")
        start = _start_of_range(content_range) if response.status == 206 else 0
        if have and start not in (0, have):  # a part that is neither the rest nor the whole: start again
            response.close()
            part.unlink(missing_ok=True)
            return fetch(url, part, label, progress, timeout)
        if response.status == 206 and start == have:  # the rest of the file, from byte `have`
            total = _total_from_range(content_range)
            mode = "ab"
        else:  # the whole file (no partial file, or a server without ranges, or a range from byte 0)
            length = response.headers.get("Content-Length")
            total = _total_from_range(content_range) if response.status == 206 else (
                int(length) if length and length.isdigit() else None)
            have, mode = 0, "wb"
        received = have
        with open(part, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=label, disable=None if progress else True) as bar:
            try:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # the connection dropped mid-transfer
                raise DownloadError(f"the transfer of {url} stopped after {_size(received)} of {_size(total)} "
                                    f"({exc})") from None
    if total is None:
        return received
    if received != total:
        raise DownloadError(f"the transfer of {url} stopped after {_size(received)} of {_size(total)}")
    return total


def _start_of_range(content_range: str) -> int | None:
    """The first byte of a ``Content-Range: bytes a-b/total`` header (None when there is none): a part that does
    not start where the file left off is taken as the whole file from its own start, and written anew."""
    match = re.match(r"\s*bytes\s+(\d+)-", content_range)
    return int(match.group(1)) if match else None


def _total_from_range(content_range: str) -> int | None:
    """The file's size from a ``Content-Range: bytes a-b/total`` (or ``bytes */total``) header."""
    match = re.search(r"/(\d+)\s*$", content_range)
    return int(match.group(1)) if match else None


def _size(size: int | None) -> str:
    if size is None:
        return "an unknown size"
    return f"{size:,} bytes" if size < 10**6 else f"{size / 1e6:.1f} MB"
