"""
A prebuilt onnxruntime-genai CUDA wheel, looked up on a package index before building.

The index is a PEP 503 "simple" index: ``<index>/<project>/`` is an HTML page with one link per
file, whose fragment carries the file's hash (``#sha256=...``), or its PEP 691 JSON form (asked
for first), which may give each file's size (PEP 700). jetson-containers uploads its Jetson
builds to the jetson-ai-lab index, one index per JetPack and CUDA
(``https://pypi.jetson-ai-lab.io/jp6/cu126/+simple/``); that index has had outages and lost
packages when it moved hosts, so every outcome (found, absent, down) is an answer here, and
building from source is always the way on.

What an index says is not trusted beyond what is checked here (the index's hash is the only check
on the wheel's content, so the way to the index must not be weaker than the index): a file name
is a PEP 427 wheel name of the page's own project with no path in it; a link has the page's
scheme, http or https; an https index is never left for http (download.urlopen refuses such
redirects); a page is read up to MAX_PAGE_BYTES and a wheel up to the size the index gives, else
MAX_WHEEL_BYTES.

A candidate is taken only if all of these hold: a release this package supports, the Python's
own ``cpXY`` tag, this machine's architecture, a sha256 from the index (or ``--prebuilt-sha256``)
that the download matches, and GPU code for this device (``gpu_code.check_wheel``).
"""
from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
import http.client
import json
import re
import time
from typing import Callable, List, Optional, Sequence, Tuple
import urllib.error
import urllib.parse
import urllib.request

from .download import DownloadError, urlopen
from .versions import (find_release, GENAI_RELEASES, OLDEST_SUPPORTED_GENAI, parse_version,
                       version_at_least)

JETSON_AI_LAB = 'https://pypi.jetson-ai-lab.io/jp{jetpack}/cu{cuda}/+simple/'
# jetson-containers names its build onnxruntime-genai; Microsoft's CUDA build is -cuda
PROJECTS = ('onnxruntime-genai-cuda', 'onnxruntime-genai')
TIMEOUT_S = 20.0
MAX_PAGE_BYTES = 8 << 20        # a project page lists files; far more than that is not an index
# A page that trickles in (each read within TIMEOUT_S) is still given up after this long.
PAGE_DEADLINE_S = 120.0
MAX_FILE_NAME = 255             # what a file system takes as one name
# A wheel whose index gives no size: onnxruntime-genai's CUDA wheels are 6-300 MB.
MAX_WHEEL_BYTES = 1 << 30
# PEP 691's JSON first; the HTML of PEP 503 from indexes that have only that
ACCEPT = 'application/vnd.pypi.simple.v1+json, text/html;q=0.1'
# A PEP 427 file name: {distribution}-{version}(-{build tag})?-{python}-{abi}-{platform}.whl, each
# part of letters, digits, '_' and '.', the version also '!' and '+' (PEP 440): no path separator
# or anything else a file system reads.
_WHEEL_RE = re.compile(r'^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._]*[A-Za-z0-9])?)'
                       r'-(?P<version>[A-Za-z0-9_.!+]+)(?:-\d[A-Za-z0-9_.]*)?'
                       r'-(?P<py>[A-Za-z0-9_.]+)-(?P<abi>[A-Za-z0-9_.]+)-(?P<plat>[A-Za-z0-9_.]+)'
                       r'\.whl$')


def jetson_ai_lab_index(jetpack_major: Optional[int], cuda: Optional[str]) -> Optional[str]:
    """Return the jetson-ai-lab index of a JetPack and CUDA ('12.6' -> cu126), None if unknown."""
    if not jetpack_major or not cuda:
        return None
    major_minor = parse_version(cuda)[:2]
    return JETSON_AI_LAB.format(jetpack=jetpack_major, cuda=''.join(map(str, major_minor)))


@dataclass(frozen=True)
class Candidate:
    file_name: str
    url: str
    version: str
    sha256: Optional[str]
    size: Optional[int] = None      # bytes, where the index gives it (PEP 700)


@dataclass(frozen=True)
class Lookup:
    status: str                     # 'found', 'absent' or 'down'
    reason: str
    candidate: Optional[Candidate] = None


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: List[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get('href') if tag == 'a' else None
        if href:
            self.hrefs.append(href)


def _project_page(index: str, project: str) -> str:
    return urllib.parse.urljoin(index.rstrip('/') + '/', project + '/')


def normalized(project: str) -> str:
    """Return a name as PEP 503 compares them: 'Onnxruntime_Genai', 'onnxruntime-genai'."""
    return re.sub(r'[-_.]+', '-', project).lower()


def wheel_name(name: str, project: str) -> Optional[re.Match]:
    r"""
    Return the PEP 427 match of a file name of project's wheel, None for anything else.

    ``name`` is the decoded file name; a name of another project, or one holding a path (after
    decoding: '/', '\\', '..', NUL), is not a wheel of this page.
    """
    match = _WHEEL_RE.match(name) if len(name) <= MAX_FILE_NAME else None
    if match is None or normalized(match.group('name')) != normalized(project):
        return None
    return match


def untrusted_index(index: str) -> Optional[str]:
    """
    Say why an index cannot vouch for its own wheels (None when it can).

    The index gives the wheel and the hash it is checked against: over plain http, whoever is on
    the way chooses both, so only https (or http to this machine itself) is taken without a
    hash pinned by --prebuilt-sha256.
    """
    parts = urllib.parse.urlsplit(index)
    host = parts.hostname or ''
    loopback = host in ('localhost', '::1') or host.startswith('127.')
    if parts.scheme == 'https' or (parts.scheme == 'http' and loopback):
        return None
    return (f'{index} is not an https index: whoever is on the way to it would choose the wheel '
            'and the hash it is checked against; use https, or pin the wheel with '
            '--prebuilt-sha256')


def _candidate(page_url: str, project: str, href: str, sha256: Optional[str],
               size: Optional[int] = None) -> Optional[Candidate]:
    url = urllib.parse.urljoin(page_url, href)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != urllib.parse.urlsplit(page_url).scheme or parts.scheme not in (
            'http', 'https'):
        return None       # file://, ftp://, or an https page sending us to http
    name = urllib.parse.unquote(parts.path.rsplit('/', 1)[-1])
    match = wheel_name(name, project)
    if match is None:
        return None
    if sha256 is None:
        found = re.match(r'sha256=([0-9a-fA-F]{64})$', parts.fragment)
        sha256 = found.group(1) if found else None
    elif not re.fullmatch(r'[0-9a-fA-F]{64}', sha256):
        sha256 = None
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
        size = None
    return Candidate(name, urllib.parse.urlunsplit(parts._replace(fragment='')),
                     match.group('version'), sha256.lower() if sha256 else None, size)


def parse_links(page_url: str, html: str, project: str) -> List[Candidate]:
    """Return project's wheel files a PEP 503 page lists (links relative to page_url)."""
    parser = _Links()
    parser.feed(html)
    found = (_candidate(page_url, project, href, None) for href in parser.hrefs)
    return [c for c in found if c is not None]


def parse_json_page(page_url: str, text: str, project: str) -> List[Candidate]:
    """Return project's wheel files a PEP 691 JSON page lists, with their sizes (PEP 700)."""
    page = json.loads(text)
    files = page.get('files') if isinstance(page, dict) else None
    if not isinstance(files, list):
        raise ValueError('a JSON project page without a list of files')
    found = []
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get('url'), str):
            continue
        hashes = entry.get('hashes')
        sha = hashes.get('sha256') if isinstance(hashes, dict) else None
        candidate = _candidate(page_url, project, entry['url'],
                               sha if isinstance(sha, str) else None, entry.get('size'))
        if candidate is not None and entry.get('filename') in (None, candidate.file_name):
            found.append(candidate)
    return found


def _platform_ok(tag: str, machine: str) -> bool:
    arch = 'aarch64' if machine in ('aarch64', 'arm64') else machine
    return any(t == f'linux_{arch}' or (t.startswith('manylinux') and t.endswith('_' + arch))
               for t in tag.split('.'))


def _same_minor(version: str):
    """Return the table's release of the same X.Y (patch releases need the same ONNX Runtime)."""
    minor = parse_version(version)[:2]
    return next((r for r in GENAI_RELEASES if parse_version(r.version)[:2] == minor), None)


def choose(candidates: Sequence[Candidate], python_tag: str, machine: str,
           wanted: Optional[str] = None, runtime_ort: Optional[str] = None
           ) -> Tuple[Optional[Candidate], str]:
    """
    Pick the wheel for this Python and machine: the wanted release, else the newest usable one.

    Usable: a release of the builder's table (or a patch release of one) whose ONNX Runtime need
    the installed one meets; a release the table does not know is not taken, since nothing says
    which ONNX Runtime it needs. Returns (candidate or None, why none / what was seen).
    """
    fitting = []
    seen = sorted({c.file_name for c in candidates})
    for c in candidates:
        match = _WHEEL_RE.match(c.file_name)
        if match is None or match.group('py') != python_tag or \
                not _platform_ok(match.group('plat'), machine):
            continue
        if not version_at_least(c.version, OLDEST_SUPPORTED_GENAI):
            continue
        release = find_release(c.version) or _same_minor(c.version)
        if release is None:
            continue
        if runtime_ort and not version_at_least(runtime_ort, release.min_ort):
            continue
        fitting.append(c)
    if wanted:
        exact = [c for c in fitting if c.version == wanted]
        if exact:
            return exact[0], ''
    if fitting:
        return max(fitting, key=lambda c: parse_version(c.version)), ''
    listed = ', '.join(seen[:6]) + (' ...' if len(seen) > 6 else '') if seen else 'no wheels'
    return None, (f'no wheel for {python_tag} on {machine} of a supported release '
                  f'({OLDEST_SUPPORTED_GENAI} or newer, in the version table'
                  + (f', needing at most ONNX Runtime {runtime_ort}' if runtime_ort else '')
                  + f'); the index lists {listed}')


def _read_page(response, deadline_s: float = PAGE_DEADLINE_S) -> bytes:
    """
    Read a whole page of at most MAX_PAGE_BYTES within deadline_s.

    A cut-off page is an error, not a short list.
    """
    deadline = time.monotonic() + deadline_s
    body = b''
    for block in iter(lambda: response.read(1 << 16), b''):
        body += block
        if len(body) > MAX_PAGE_BYTES:
            raise ValueError(f'the page is larger than {MAX_PAGE_BYTES >> 20} MiB')
        if time.monotonic() > deadline:
            raise ValueError(f'the page took more than {deadline_s:g} s to arrive')
    headers = getattr(response, 'headers', None)
    expected = headers.get('Content-Length') if headers is not None else None
    if expected and expected.isdigit() and len(body) < int(expected):
        raise http.client.IncompleteRead(body, int(expected) - len(body))
    return body


def _read_project(opener: Callable, page: str, project: str, timeout_s: float
                  ) -> Tuple[str, List[Candidate]]:
    """Return (the page's final URL, the wheels it lists); raises what the request raises."""
    request = urllib.request.Request(page, headers={'Accept': ACCEPT})
    with opener(request, timeout=timeout_s) as response:
        body = _read_page(response).decode('utf-8', errors='replace')
        # links are relative to where the page is, after any redirect (hosts move)
        final = response.geturl()
        headers = getattr(response, 'headers', None)
        kind = (headers.get('Content-Type') or '') if headers is not None else ''
    if urllib.parse.urlsplit(page).scheme == 'https' and \
            urllib.parse.urlsplit(final).scheme != 'https':
        raise DownloadError(f'refused: {page} led from https to '
                            f'{urllib.parse.urlsplit(final).scheme} ({final})')
    if 'json' in kind.split(';')[0]:
        return final, parse_json_page(final, body, project)
    return final, parse_links(final, body, project)


def look_up(index: str, python_tag: str, machine: str, wanted: Optional[str] = None,
            runtime_ort: Optional[str] = None, opener: Callable = urlopen,
            timeout_s: float = TIMEOUT_S) -> Lookup:
    """
    Ask the index for each project name in turn; say what was found, absent or unreachable.

    Each read waits at most ``timeout_s``, and a page is read up to ``MAX_PAGE_BYTES``. The
    found reason names the page the wheel was listed on, after any redirect.
    """
    candidates: List[Candidate] = []
    pages = {}
    for project in PROJECTS:
        page = _project_page(index, project)
        try:
            final, listed = _read_project(opener, page, project, timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                continue
            problem = f'{page} answered HTTP {exc.code}'
        except DownloadError as exc:      # a downgrade: the answer is not trusted at all
            problem = str(exc)
        except OSError as exc:      # URLError, timeouts, refused connections
            problem = f'{index} could not be reached ({exc})'
        except (ValueError, RecursionError, http.client.HTTPException) as exc:   # cut-off, garbled
            problem = f'{page} gave a broken answer ({type(exc).__name__}: {exc})'
        else:
            candidates += listed
            pages.update((c.url, final) for c in listed)
            continue
        if not candidates:
            return Lookup('down', problem)
        break       # what the other project's page listed is still an answer
    if not candidates:
        return Lookup('absent', f'{index} has no {" or ".join(PROJECTS)} project')
    candidate, why = choose(candidates, python_tag, machine, wanted, runtime_ort)
    if candidate is None:
        return Lookup('absent', why)
    return Lookup('found', f'{candidate.file_name} on {pages[candidate.url]}', candidate)
