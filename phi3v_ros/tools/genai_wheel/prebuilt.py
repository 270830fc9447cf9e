"""
A prebuilt onnxruntime-genai CUDA wheel, looked up on a package index before building.

The index is a PEP 503 "simple" index: ``<index>/<project>/`` is an HTML page with one link per
file, whose fragment carries the file's hash (``#sha256=...``). jetson-containers uploads its
Jetson builds to the jetson-ai-lab index, one index per JetPack and CUDA
(``https://pypi.jetson-ai-lab.io/jp6/cu126/+simple/``); that index has had outages and lost
packages when it moved hosts, so every outcome (found, absent, down) is an answer here, and
building from source is always the way on.

A candidate is taken only if all of these hold: a release this package supports, the Python's
own ``cpXY`` tag, this machine's architecture, a sha256 from the index (or ``--prebuilt-sha256``)
that the download matches, and GPU code for this device (``gpu_code.check_wheel``).
"""
from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
import http.client
import re
from typing import Callable, List, Optional, Sequence, Tuple
import urllib.error
import urllib.parse
import urllib.request

from .versions import (find_release, GENAI_RELEASES, OLDEST_SUPPORTED_GENAI, parse_version,
                       version_at_least)

JETSON_AI_LAB = 'https://pypi.jetson-ai-lab.io/jp{jetpack}/cu{cuda}/+simple/'
# jetson-containers names its build onnxruntime-genai; Microsoft's CUDA build is -cuda
PROJECTS = ('onnxruntime-genai-cuda', 'onnxruntime-genai')
TIMEOUT_S = 20.0
MAX_PAGE_BYTES = 8 << 20        # a project page lists files; far more than that is not an index
_WHEEL_RE = re.compile(r'^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-'
                       r'(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$')


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


def parse_links(page_url: str, html: str) -> List[Candidate]:
    """Return the wheel files a simple-index project page lists (links relative to page_url)."""
    parser = _Links()
    parser.feed(html)
    found = []
    for href in parser.hrefs:
        url = urllib.parse.urljoin(page_url, href)
        parts = urllib.parse.urlsplit(url)
        name = urllib.parse.unquote(parts.path.rsplit('/', 1)[-1])
        match = _WHEEL_RE.match(name)
        if not match:
            continue
        sha = re.match(r'sha256=([0-9a-fA-F]{64})$', parts.fragment)
        found.append(Candidate(name, urllib.parse.urlunsplit(parts._replace(fragment='')),
                               match.group('version'), sha.group(1).lower() if sha else None))
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
        if match.group('py') != python_tag or not _platform_ok(match.group('plat'), machine):
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


def _read_page(response) -> bytes:
    """Read a whole page of at most MAX_PAGE_BYTES; a cut-off one is an error, not a short list."""
    body = response.read(MAX_PAGE_BYTES + 1)
    if len(body) > MAX_PAGE_BYTES:
        raise ValueError(f'the page is larger than {MAX_PAGE_BYTES >> 20} MiB')
    headers = getattr(response, 'headers', None)
    expected = headers.get('Content-Length') if headers is not None else None
    if expected and expected.isdigit() and len(body) < int(expected):
        raise http.client.IncompleteRead(body, int(expected) - len(body))
    return body


def look_up(index: str, python_tag: str, machine: str, wanted: Optional[str] = None,
            runtime_ort: Optional[str] = None, opener: Callable = urllib.request.urlopen,
            timeout_s: float = TIMEOUT_S) -> Lookup:
    """
    Ask the index for each project name in turn; say what was found, absent or unreachable.

    Each read waits at most ``timeout_s``, and a page is read up to ``MAX_PAGE_BYTES``.
    """
    candidates: List[Candidate] = []
    for project in PROJECTS:
        page = _project_page(index, project)
        request = urllib.request.Request(page, headers={'Accept': 'text/html'})
        try:
            with opener(request, timeout=timeout_s) as response:
                html = _read_page(response).decode('utf-8', errors='replace')
                # links are relative to where the page is, after any redirect (hosts move)
                page = response.geturl()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                continue
            problem = f'{page} answered HTTP {exc.code}'
        except OSError as exc:      # URLError, timeouts, refused connections
            problem = f'{index} could not be reached ({exc})'
        except (ValueError, http.client.HTTPException) as exc:     # a cut-off or garbled answer
            problem = f'{page} gave a broken answer ({type(exc).__name__}: {exc})'
        else:
            candidates += parse_links(page, html)
            continue
        if not candidates:
            return Lookup('down', problem)
        break       # what the other project's page listed is still an answer
    if not candidates:
        return Lookup('absent', f'{index} has no {" or ".join(PROJECTS)} project')
    candidate, why = choose(candidates, python_tag, machine, wanted, runtime_ort)
    if candidate is None:
        return Lookup('absent', why)
    return Lookup('found', f'{candidate.file_name} on {index}', candidate)
