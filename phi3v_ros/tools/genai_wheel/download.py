"""Downloads verified against pinned sha256 sums, and header extraction from a source archive."""
from __future__ import annotations

import hashlib
import http.client
from pathlib import Path
import tarfile
from typing import Callable, List, Optional
import urllib.error
import urllib.request

CHUNK = 1024 * 1024
# No data for this long fails a download (which then resumes on the next run).
TIMEOUT_S = 60.0


class DownloadError(RuntimeError):
    """A download failed or did not match its pinned sha256; the message says what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, delete_on_mismatch: bool = True) -> None:
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        if delete_on_mismatch:
            Path(path).unlink()
        raise DownloadError(
            f'{Path(path).name} does not match its pinned sha256 (expected {expected}, got '
            f'{actual}); it was {"deleted" if delete_on_mismatch else "kept"}: rerun to download '
            f'it again, and if it fails again the source changed: do not use it')


def download(url: str, dest: Path, sha256: str, opener: Callable = urllib.request.urlopen,
             progress: Optional[Callable[[int, Optional[int]], None]] = None,
             timeout_s: float = TIMEOUT_S) -> Path:
    """
    Download url to dest unless dest already has the pinned content; verify before keeping it.

    The file is written to ``dest.part`` and only renamed to ``dest`` once its sha256 matches, so
    an interrupted or corrupted download is never used. An interrupted download resumes from the
    end of ``dest.part`` (an HTTP Range request; a server that ignores it sends the whole file
    again, which then replaces the part). No data for timeout_s seconds fails the download.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            verify_sha256(dest, sha256)
            return dest
        except DownloadError:
            pass   # deleted: download again
    part = dest.with_name(dest.name + '.part')
    have = part.stat().st_size if part.exists() else 0
    if have and sha256_file(part).lower() == sha256.lower():   # complete, stopped before renaming
        part.replace(dest)
        return dest
    request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
        try:
            response = opener(request, timeout=timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not have:
                raise
            exc.close()     # its connection
            # "Range Not Satisfiable": the part is as long as the file or longer, yet wrong
            part.unlink()
            have = 0
            response = opener(urllib.request.Request(url), timeout=timeout_s)
        with response:
            resumed = have > 0 and getattr(response, 'status', None) == 206
            total = (response.headers.get('Content-Length') if hasattr(response, 'headers')
                     else None)
            total = int(total) + (have if resumed else 0) if total else None
            received = have if resumed else 0
            with open(part, 'ab' if resumed else 'wb') as handle:
                for block in iter(lambda: response.read(CHUNK), b''):
                    handle.write(block)
                    received += len(block)
                    if progress:
                        progress(received, total)
            if total is not None and received < total:   # the connection closed early
                raise http.client.IncompleteRead(b'', total - received)
    except (OSError, http.client.HTTPException) as exc:   # socket.timeout is an OSError
        kept = part.stat().st_size if part.exists() else 0
        raise DownloadError(f'could not download {url} ({exc}): check the network and rerun; '
                            f'the {kept} bytes received are kept and the download resumes from '
                            'there') from exc
    verify_sha256(part, sha256)
    part.replace(dest)
    return dest


def extract_headers(archive: Path, dest: Path,
                    subdir: str = 'include/onnxruntime/core/session/') -> List[str]:
    """
    Copy the ``*.h`` files of ``<top>/<subdir>`` of a .tar.gz into dest (flat).

    Returns their names.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(archive, 'r:*') as tar:
        for member in tar.getmembers():
            parts = member.name.split('/', 1)
            if len(parts) != 2 or not member.isfile():
                continue
            inner = parts[1]
            if not inner.startswith(subdir) or '/' in inner[len(subdir):] or \
                    not inner.endswith('.h'):
                continue
            name = Path(inner).name
            handle = tar.extractfile(member)
            if handle is None:
                continue
            (dest / name).write_bytes(handle.read())
            names.append(name)
    if not names:
        raise DownloadError(
            f'{archive.name} has no {subdir}*.h: it is not an ONNX Runtime source archive')
    return sorted(names)
