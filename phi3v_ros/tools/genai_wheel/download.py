"""
Downloads verified against pinned sha256 sums, and header extraction from a source archive.

What a server sends is bounded: a download stops at max_bytes (the size an index gives, else a
fixed cap), a redirect never leaves https for http nor http(s) for another scheme, and the file
is written only inside the folder it was meant for (``inside``).
"""
from __future__ import annotations

import hashlib
import http.client
import os
from pathlib import Path
import tarfile
from typing import Callable, List, Optional
import urllib.error
import urllib.parse
import urllib.request

CHUNK = 1024 * 1024
# No data for this long fails a download (which then resumes on the next run).
TIMEOUT_S = 60.0
# What a download may be when nothing better is known: far above the files the builder fetches
# (a wheel of tens of MB, an ONNX Runtime source archive of about 100 MB).
MAX_DOWNLOAD_BYTES = 2 << 30


class DownloadError(RuntimeError):
    """A download failed or did not match its pinned sha256; the message says what to do."""


def _mib(size: int) -> str:
    return f'{size / (1 << 20):g} MiB'


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects within http(s), never from https to anything else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old = urllib.parse.urlsplit(req.full_url).scheme
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme
        if new not in ('http', 'https') or (old == 'https' and new != 'https'):
            fp.close()
            raise DownloadError(f'refused: {req.full_url} redirects from {old} to {new} '
                                f'({newurl}): whoever answers there would choose what is '
                                'downloaded and its hash')
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def urlopen(request, timeout: float):
    """Open a URL as urllib does, with only the redirects _NoDowngrade allows."""
    # An opener per call: from Python 3.12 an HTTPSHandler reads the trust store (SSL_CERT_FILE)
    # and the proxies when it is made, so one made at import would miss what is set after it.
    return urllib.request.build_opener(_NoDowngrade).open(request, timeout=timeout)


def inside(folder: Path, name: str) -> Path:
    """
    Return folder / name, proven to stay inside folder; DownloadError otherwise.

    name must be one plain file name (no separator, not '.' or '..'), and the resolved path (a
    link already there followed) must still lie in the resolved folder.
    """
    folder = Path(folder)
    if not name or name in ('.', '..') or any(c in name for c in ('/', '\\', '\0')):
        raise DownloadError(f'{name!r} is not a plain file name: refused')
    target = folder / name
    real_folder = os.path.realpath(folder)
    if os.path.dirname(os.path.realpath(target)) != real_folder:
        raise DownloadError(f'{target} leads outside {folder}: refused')
    return target


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


def download(url: str, dest: Path, sha256: str, opener: Callable = urlopen,
             progress: Optional[Callable[[int, Optional[int]], None]] = None,
             timeout_s: float = TIMEOUT_S, max_bytes: int = MAX_DOWNLOAD_BYTES,
             bound: Optional[str] = None) -> Path:
    """
    Download url to dest unless dest already has the pinned content; verify before keeping it.

    The file is written to ``dest.part`` and only renamed to ``dest`` once its sha256 matches, so
    an interrupted or corrupted download is never used. An interrupted download resumes from the
    end of ``dest.part`` (an HTTP Range request; a server that ignores it sends the whole file
    again, which then replaces the part). No data for timeout_s seconds fails the download; so
    does a file longer than max_bytes (``bound`` says where that number comes from), whose part
    is deleted.
    """
    limit = bound or _mib(max_bytes)
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
            total = int(total) + (have if resumed else 0) if total and total.isdigit() else None
            if total is not None and total > max_bytes:
                raise DownloadError(f'{url} announces {_mib(total)}, more than {limit}: '
                                    'refused')
            received = have if resumed else 0
            with open(part, 'ab' if resumed else 'wb') as handle:
                for block in iter(lambda: response.read(CHUNK), b''):
                    received += len(block)
                    if received > max_bytes:
                        break
                    handle.write(block)
                    if progress:
                        progress(received, total)
            if received > max_bytes:
                part.unlink()
                raise DownloadError(f'{url} sends more than {limit}: refused')
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
