"""
Building from folders instead of the network: ``--source DIR`` and ``--deps-dir DIR``.

onnxruntime-genai's CMake downloads its third-party sources with FetchContent: the URLs are in
``cmake/deps.txt`` (read by ``cmake/external/onnxruntime_external_deps.cmake``), and
onnxruntime-extensions, one of them, declares its own (the ``ort_genai`` preset's dlib, dr_libs,
GSL and nlohmann json, in its ``cmake/externals/*.cmake``). CMake's own offline switch is used:
``FETCHCONTENT_SOURCE_DIR_<NAME>`` points each declared dependency at a local folder and
``FETCHCONTENT_FULLY_DISCONNECTED`` forbids any download, so a missing folder fails the
configure step instead of reaching for the network. The folder layout is one sub-folder per
dependency, named as ``cmake/deps.txt`` (or, for the nested ones, ``FetchContent_Declare``)
names it, holding that dependency's source tree at the pinned version (an extracted archive of
the listed URL, or a checkout of the listed commit).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import re
from typing import List, Optional, Tuple

# deps.txt entries a Linux CUDA build never declares: the DirectML (Windows) and the optional
# constrained-decoding (USE_GUIDANCE, off here) dependencies.
NOT_USED_ON_LINUX_CUDA = frozenset({'microsoft_wil', 'directx_headers', 'llguidance',
                                    'corrosion', 'nuget'})
EXTENSIONS = 'onnxruntime_extensions'
# the cmake/externals files of onnxruntime-extensions its ort_genai preset includes
EXTENSIONS_PRESET_EXTERNALS = ('gsl.cmake', 'dlib.cmake', 'dr_libs.cmake', 'json.cmake')

_DECLARE_RE = re.compile(r'FetchContent_Declare\s*\(\s*(\w+)(.*?)\)', re.DOTALL)
_DEP_VAR_RE = re.compile(r'\$\{DEP_URL_(\w+)\}')
_URL_RE = re.compile(r'\b(?:URL|GIT_REPOSITORY)\s+(\S+)')
_PIN_RE = re.compile(r'\b(?:URL_HASH\s+SHA1=|GIT_TAG\s+)(\S+)')


class LocalSourceError(RuntimeError):
    """A local source tree or dependency folder is missing or is not the expected one."""


@dataclass(frozen=True)
class Dependency:
    folder: str           # its sub-folder in --deps-dir
    fetch_name: str       # the FetchContent name: FETCHCONTENT_SOURCE_DIR_<FETCH_NAME upper>
    url: str              # what CMake would download
    pin: str              # the SHA1 of the archive, or the git commit
    is_git: bool = False  # a git repository at a commit, not an archive

    @property
    def cache_variable(self) -> str:
        return f'FETCHCONTENT_SOURCE_DIR_{self.fetch_name.upper()}'


def source_version(source: Path) -> Optional[str]:
    """Return the release a source tree is (its VERSION_INFO file), None when it has none."""
    try:
        return (Path(source) / 'VERSION_INFO').read_text().strip() or None
    except OSError:
        return None


def check_source(source: Path, version: str) -> None:
    """Raise LocalSourceError unless ``source`` is an onnxruntime-genai tree of ``version``."""
    source = Path(source)
    if not (source / 'build.py').is_file() or not (source / 'cmake' / 'deps.txt').is_file():
        raise LocalSourceError(f'{source} is not an onnxruntime-genai source tree (no build.py '
                               'and cmake/deps.txt): give --source the top folder of a checkout '
                               f'or extracted archive of the v{version} tag')
    found = source_version(source)
    if found is None:
        raise LocalSourceError(f'{source} has no VERSION_INFO, so which release it is cannot be '
                               f'checked: give --source a checkout or extracted archive of the '
                               f'v{version} tag (both have it)')
    if found != version:
        raise LocalSourceError(f'{source} is onnxruntime-genai {found} (its VERSION_INFO), not '
                               f'{version}: pass --genai-version {found} or a source tree of '
                               f'v{version}')


def _deps_txt(source: Path) -> List[Tuple[str, str, str]]:
    rows = []
    for line in (Path(source) / 'cmake' / 'deps.txt').read_text().splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        parts = line.split(';')
        if len(parts) >= 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def genai_dependencies(source: Path) -> List[Dependency]:
    """Return what onnxruntime-genai's own CMake would download for a Linux CUDA build."""
    source = Path(source)
    urls = {name: (url, pin) for name, url, pin in _deps_txt(source)}
    declared = {}
    for cmake_file in sorted((source / 'cmake').rglob('*.cmake')):
        for fetch_name, body in _DECLARE_RE.findall(cmake_file.read_text(errors='replace')):
            match = _DEP_VAR_RE.search(body)
            if match:
                declared.setdefault(match.group(1), (fetch_name, 'GIT_REPOSITORY' in body))
    deps = []
    for name, (url, pin) in urls.items():
        if name in NOT_USED_ON_LINUX_CUDA or name not in declared:
            continue
        fetch_name, is_git = declared[name]
        deps.append(Dependency(name, fetch_name, url, pin, is_git))
    return deps


def extensions_dependencies(extensions: Path) -> List[Dependency]:
    """Return what onnxruntime-extensions' ort_genai preset would download."""
    deps = []
    for file_name in EXTENSIONS_PRESET_EXTERNALS:
        path = Path(extensions) / 'cmake' / 'externals' / file_name
        try:
            text = path.read_text(errors='replace')
        except OSError:
            continue
        for fetch_name, body in _DECLARE_RE.findall(text):
            url, pin = _URL_RE.search(body), _PIN_RE.search(body)
            dep = Dependency(fetch_name.lower(), fetch_name, url.group(1) if url else '?',
                             pin.group(1) if pin else '?', 'GIT_REPOSITORY' in body)
            if dep not in deps:
                deps.append(dep)
    return deps


def required_dependencies(source: Path, deps_dir: Path) -> List[Dependency]:
    """
    Return every dependency the offline build needs, nested ones included.

    The nested ones are read from the onnxruntime-extensions folder in ``deps_dir``, so they are
    known only once that folder is there.
    """
    deps = genai_dependencies(source)
    if any(d.folder == EXTENSIONS for d in deps):
        deps += extensions_dependencies(Path(deps_dir) / EXTENSIONS)
    return deps


def missing_dependencies(deps: List[Dependency], deps_dir: Path) -> List[Dependency]:
    """Return the dependencies whose folder is absent or empty."""
    missing = []
    for dep in deps:
        folder = Path(deps_dir) / dep.folder
        if not folder.is_dir() or not any(folder.iterdir()):
            missing.append(dep)
    return missing


def describe_missing(missing: List[Dependency], deps_dir: Path) -> List[str]:
    """Return, for each missing dependency, where to get it and where it goes."""
    lines = []
    for dep in missing:
        what = f'a checkout of commit {dep.pin}' if dep.is_git else \
            f'the extracted archive, sha1 {dep.pin}'
        lines.append(f'{Path(deps_dir) / dep.folder}/  <- {dep.url} ({what})')
    return lines


def cmake_defines(deps: List[Dependency], deps_dir: Path) -> List[str]:
    """Return the -D settings (without -D) that point CMake at the folders, offline."""
    defines = ['FETCHCONTENT_FULLY_DISCONNECTED=ON']
    defines += [f'{dep.cache_variable}={Path(deps_dir).resolve() / dep.folder}' for dep in deps]
    return defines
