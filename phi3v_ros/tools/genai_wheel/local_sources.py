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
import hashlib
import os
from pathlib import Path
import re
import shlex
import subprocess
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
    nested: bool = False  # declared by onnxruntime-extensions, not by onnxruntime-genai
    # known only for the pinned releases (RELEASE_DEPENDENCIES):
    ref: str = ''          # the tag or commit the URL names, as people call it
    commit: str = ''       # the git commit of that ref
    fingerprint: str = ''  # fingerprint() of the folder holding it

    @property
    def cache_variable(self) -> str:
        return f'FETCHCONTENT_SOURCE_DIR_{self.fetch_name.upper()}'

    @property
    def declared(self) -> Tuple[str, str, str, str, bool]:
        """Return what CMake is told: two with the same are the same dependency."""
        return (self.folder, self.fetch_name, self.url, self.pin, self.is_git)


@dataclass(frozen=True)
class ReleaseDependencies:
    genai: Tuple[Dependency, ...]       # in cmake/deps.txt order
    extensions: Tuple[Dependency, ...]  # those of its onnxruntime-extensions commit

    @property
    def every(self) -> List[Dependency]:
        return list(self.genai + self.extensions)


# Every dependency of a Linux CUDA build of the releases the builder builds, so that an offline
# build can be prepared (and its folders checked) before the source tree is there. Read from the
# v0.9.2 and v0.11.4 tags (cmake/deps.txt, cmake/external/onnxruntime_external_deps.cmake) and
# from cmake/externals/{gsl,dlib,dr_libs,json}.cmake of their onnxruntime-extensions commits; the
# fingerprints are of `git archive <commit>` of each repository (what GitHub's archives hold).
_PYBIND11 = Dependency(
    'pybind11', 'pybind11_project',
    'https://github.com/pybind/pybind11/archive/refs/tags/v2.13.6.zip',
    'f780292da9db273c8ef06ccf5fd4b623624143e9', ref='v2.13.6',
    commit='a2e59f0e7065404b44dfe92a28aca47ba1378dc4',
    fingerprint='5b70f4671ad025a011cfcd67747a9477661944796b68982f68a54a170c65e0f2')
_GOOGLETEST = Dependency(
    'googletest', 'googletest',
    'https://github.com/google/googletest/archive/530d5c8c84abd2a46f38583ee817743c9b3a42b4.zip',
    '5e3a61db2aa975cfd0f97ba92c818744e7fa7034', ref='530d5c8c84abd2a46f38583ee817743c9b3a42b4',
    commit='530d5c8c84abd2a46f38583ee817743c9b3a42b4',
    fingerprint='785eace9943c153a694a7721b0c5b6b74e5da17745e075da08cd58094be5b652')
_EXTENSIONS_URL = 'https://github.com/microsoft/onnxruntime-extensions.git'
# the ort_genai preset's own: the same for both extensions commits
_EXTENSIONS_OWN = (
    Dependency('gsl', 'GSL', 'https://github.com/microsoft/GSL/archive/refs/tags/v4.0.0.zip',
               'cf368104cd22a87b4dd0c80228919bb2df3e2a14', nested=True, ref='v4.0.0',
               commit='a3534567187d2edc428efd3f13466ff75fe5805c',
               fingerprint='d0d704a396ed030df22cfc60ee71216fba169160294a999061a1c8ea7a51e7f0'),
    Dependency('dlib', 'dlib', 'https://github.com/davisking/dlib/archive/refs/tags/v19.24.7.zip',
               '6c63ea576e2b525751b0dead27c6c1139c5100ae', nested=True, ref='v19.24.7',
               commit='d3520131a6e0e0fb62bc556b0222b45d99caf905',
               fingerprint='df1a53103584f316788e8f7a27b0338df67a91963548b89606850b0ffc03faad'),
    Dependency('dr_libs', 'dr_libs', 'https://github.com/mackron/dr_libs/archive/'
               '660795b2834aebb2217c9849d668b6e4bd4ef810.zip',
               'af554b21dcd1ab3c7c8d946638682a2cbccf3e16', nested=True,
               ref='660795b2834aebb2217c9849d668b6e4bd4ef810',
               commit='660795b2834aebb2217c9849d668b6e4bd4ef810',
               fingerprint='11b1fe694398ddd1d50c8d1b4679e5c2edee97be78c6fa29125369ac8592b642'),
    Dependency('nlohmann_json', 'nlohmann_json',
               'https://codeload.github.com/nlohmann/json/zip/refs/tags/v3.11.3',
               '5e88795165cc8590138d1f47ce94ee567b85b4d6', nested=True, ref='v3.11.3',
               commit='9cca280a4d0ccf0c08f47a99aa71d1b0e52f8d03',
               fingerprint='dbe4f04a18d9bcf819f2f5eb03cf3e24a9cf8b057677e8f207045321fd0af2a2'),
)
RELEASE_DEPENDENCIES = {
    '0.9.2': ReleaseDependencies((_PYBIND11, _GOOGLETEST, Dependency(
        EXTENSIONS, EXTENSIONS, _EXTENSIONS_URL, 'bd8fb6d86e98c17e397c42fc001913cc2e035597',
        is_git=True, ref='bd8fb6d86e98c17e397c42fc001913cc2e035597',
        commit='bd8fb6d86e98c17e397c42fc001913cc2e035597',
        fingerprint='31dfee2345e8e10d74fbbf868460c2c9c3b2580c6fdf7628b436d82e3af0dec7')),
        _EXTENSIONS_OWN),
    '0.11.4': ReleaseDependencies((_PYBIND11, _GOOGLETEST, Dependency(
        EXTENSIONS, EXTENSIONS, _EXTENSIONS_URL, '9f1f67d6d075793a0828b24e73d50803eb657e9a',
        is_git=True, ref='9f1f67d6d075793a0828b24e73d50803eb657e9a',
        commit='9f1f67d6d075793a0828b24e73d50803eb657e9a',
        fingerprint='88fc5ab584e634018d3694eb85799b93acd2f95df2f86fb6a47c64201f10172b')),
        _EXTENSIONS_OWN),
}
# a file at the top of each archive, to say where the extracted files belong
_TOP_FILE = {'dr_libs': 'dr_wav.h'}


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
                             pin.group(1) if pin else '?', 'GIT_REPOSITORY' in body, nested=True)
            if dep not in deps:
                deps.append(dep)
    return deps


def release_dependencies(version: Optional[str]) -> Optional[ReleaseDependencies]:
    """Return the pinned dependencies of an onnxruntime-genai release, None when not pinned."""
    return RELEASE_DEPENDENCIES.get(version) if version else None


def _with_pins(deps: List[Dependency], pinned) -> List[Dependency]:
    """Return ``deps`` with each one that the table pins exactly replaced by its table entry."""
    by_declared = {dep.declared: dep for dep in pinned}
    return [by_declared.get(dep.declared, dep) for dep in deps]


def required_dependencies(source: Path, deps_dir: Path,
                          version: Optional[str] = None) -> List[Dependency]:
    """
    Return every dependency the offline build needs, nested ones included.

    Read from the source tree where it is there; the nested ones from the onnxruntime-extensions
    folder in ``deps_dir``. For a pinned release (``version``, else the tree's VERSION_INFO),
    what is not there yet to read comes from RELEASE_DEPENDENCIES, as long as the tree declares
    the release's onnxruntime-extensions commit; otherwise the nested ones are known only once
    that folder is there.
    """
    version = version or source_version(source)
    pinned = release_dependencies(version)
    if not (Path(source) / 'cmake' / 'deps.txt').is_file():
        return pinned.every if pinned else []
    deps = _with_pins(genai_dependencies(source), pinned.genai if pinned else ())
    extensions = next((dep for dep in deps if dep.folder == EXTENSIONS), None)
    if extensions is not None:
        nested = extensions_dependencies(Path(deps_dir) / EXTENSIONS)
        if pinned and not nested and extensions in pinned.genai:
            nested = list(pinned.extensions)
        deps += _with_pins(nested, pinned.extensions if pinned else ())
    return deps


def nested_unknown(deps: List[Dependency]) -> bool:
    """Return True when onnxruntime-extensions is needed but its own dependencies are not known."""
    return any(dep.folder == EXTENSIONS for dep in deps) and not any(dep.nested for dep in deps)


def release_differences(source: Path, version: str) -> List[str]:
    """Return how the tree's cmake/deps.txt differs from the release's (none if not pinned)."""
    pinned = release_dependencies(version)
    if pinned is None:
        return []
    found = {dep.folder: dep for dep in genai_dependencies(source)}
    expected = {dep.folder: dep for dep in pinned.genai}
    lines = []
    for folder in sorted(set(found) | set(expected)):
        have, want = found.get(folder), expected.get(folder)
        if have is None:
            lines.append(f'{folder}: not declared; {version} has {want.url} ({want.pin})')
        elif want is None:
            lines.append(f'{folder}: {have.url} ({have.pin}), which {version} does not have')
        elif have.declared != want.declared:
            lines.append(f'{folder}: {have.url} ({have.pin}); {version} has {want.url} '
                         f'({want.pin})')
    return lines


def missing_dependencies(deps: List[Dependency], deps_dir: Path) -> List[Dependency]:
    """Return the dependencies whose folder is absent or empty."""
    missing = []
    for dep in deps:
        folder = Path(deps_dir) / dep.folder
        if not folder.is_dir() or not any(folder.iterdir()):
            missing.append(dep)
    return missing


def fetch_command(dep: Dependency, deps_dir: Path) -> str:
    """Return the shell command that puts ``dep`` into its folder (absent or empty)."""
    dest = Path(deps_dir) / dep.folder
    if dep.is_git:
        return (f'git clone {shlex.quote(dep.url)} {shlex.quote(str(dest))} && '
                f'git -C {shlex.quote(str(dest))} checkout {dep.pin}')
    archive = shlex.quote(f'/tmp/{dep.folder}.zip')
    unpacked = shlex.quote(f'{dest}.tmp')
    # GitHub's archives hold one top folder (dlib-19.24.7/): it becomes the dependency's folder;
    # mv -T renames onto an absent or empty folder and refuses a full one
    return (f'curl -fL -o {archive} {shlex.quote(dep.url)} && unzip -qo {archive} -d {unpacked}'
            f' && mv -T {unpacked}/* {shlex.quote(str(dest))} && rmdir {unpacked}')


def top_file(dep: Dependency, deps_dir: Path) -> Path:
    """Return a file at the top of the dependency's source tree: where its files belong."""
    return Path(deps_dir) / dep.folder / _TOP_FILE.get(dep.folder, 'CMakeLists.txt')


def describe_missing(missing: List[Dependency], deps_dir: Path) -> List[str]:
    """Return, for each missing dependency, where to get it, where it goes, and the command."""
    lines = []
    for dep in missing:
        what = f'a checkout of commit {dep.pin}' if dep.is_git else \
            f'the extracted archive, sha1 {dep.pin}'
        lines.append(f'{Path(deps_dir) / dep.folder}/  <- {dep.url} ({what})')
        lines.append(f'  $ {fetch_command(dep, deps_dir)}')
    return lines


@dataclass(frozen=True)
class Mismatch:
    dep: Dependency
    found: str              # the folder's fingerprint
    head: Optional[str]     # what git says the folder is at, for a git checkout


def mismatched_dependencies(deps: List[Dependency], deps_dir: Path) -> List[Mismatch]:
    """Return the pinned dependencies whose folder is there but holds other content."""
    mismatches = []
    for dep in deps:
        folder = Path(deps_dir) / dep.folder
        if not dep.fingerprint or dep in missing_dependencies([dep], deps_dir):
            continue
        found = fingerprint(folder)
        if found != dep.fingerprint:
            mismatches.append(Mismatch(dep, found, git_head(folder)))
    return mismatches


def git_head(folder: Path) -> Optional[str]:
    """Return the commit a git checkout is at, None for a folder that is not one."""
    if not (Path(folder) / '.git').exists():
        return None
    try:
        result = subprocess.run(['git', '-C', str(folder), 'rev-parse', 'HEAD'],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f'? (git rev-parse HEAD failed: {exc})'
    if result.returncode != 0:
        return f'? (git rev-parse HEAD failed: {result.stderr.strip()})'
    return result.stdout.strip()


def describe_mismatch(mismatch: Mismatch, deps_dir: Path) -> Tuple[str, str]:
    """Return what is wrong with a dependency folder of other content, and the fix."""
    dep = mismatch.dep
    folder = Path(deps_dir) / dep.folder
    what = (f'{folder} is not {dep.folder} {dep.ref} (commit {dep.commit}): its files differ '
            f'(fingerprint {mismatch.found[:16]}, expected {dep.fingerprint[:16]})')
    if mismatch.head == dep.commit:
        what += (f'; git says it is at {mismatch.head}, the pinned commit, so files were changed, '
                 'added or removed (git -C ' + shlex.quote(str(folder)) + ' status --ignored '
                 'shows which)')
    elif mismatch.head:
        what += f'; git says it is at {mismatch.head}'
    entries = [entry for entry in folder.iterdir() if entry.name != '.git']
    if len(entries) == 1 and entries[0].is_dir():
        # the usual slip with GitHub's archives: extracted with their top folder
        what += (f'; it holds only the folder {entries[0].name}/, whose contents belong '
                 f'directly in it ({top_file(dep, deps_dir)})')
    fix = f'move {folder} away, then: {fetch_command(dep, deps_dir)}'
    if mismatch.head:
        fix = (f'git -C {shlex.quote(str(folder))} checkout {dep.commit}, with no changed or '
               f'extra files (git status --ignored); or {fix}')
    return what, fix


def cmake_defines(deps: List[Dependency], deps_dir: Path) -> List[str]:
    """Return the -D settings (without -D) that point CMake at the folders, offline."""
    defines = ['FETCHCONTENT_FULLY_DISCONNECTED=ON']
    defines += [f'{dep.cache_variable}={Path(deps_dir).resolve() / dep.folder}' for dep in deps]
    return defines


def fingerprint(folder: Path) -> str:
    """
    Return the content fingerprint of a folder: the same for an extracted archive and a checkout.

    Each file below ``folder`` gives its relative posix path and its git blob id (the SHA-1 of
    the header ``blob <size>``, a NUL byte and its bytes; of the link text for a symbolic link);
    the sha256 of the sorted list is the fingerprint. Folders, file modes and times are left out
    (an archive and a checkout differ there), and so is anything named ``.git``: git never
    tracks such a path, so it belongs to the checkout, not to the commit. The blob id, not a
    sha256 of the bytes, is what is taken so that a pin can be computed from ``git ls-tree``
    for files whose content a mirror leaves out (onnxruntime-extensions' large test data).
    """
    root = os.fspath(folder)
    entries = []
    pending = ['']
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative) if relative else root) as listing:
            for entry in listing:
                if entry.name == '.git':
                    continue
                path = f'{relative}/{entry.name}' if relative else entry.name
                if entry.is_symlink():
                    blob = blob_id(os.fsencode(os.readlink(entry.path)))
                elif entry.is_dir():
                    pending.append(path)
                    continue
                elif entry.is_file():
                    blob = _file_blob_id(entry.path, entry.stat().st_size)
                else:
                    continue
                entries.append((path, blob))
    return combine_fingerprint(entries)


def combine_fingerprint(entries) -> str:
    """Return the fingerprint of (relative posix path, git blob id) pairs, in any order."""
    total = hashlib.sha256()
    for path, blob in sorted((os.fsencode(path), blob) for path, blob in entries):
        total.update(path + b'\0' + blob.encode('ascii') + b'\n')
    return total.hexdigest()


def blob_id(data: bytes) -> str:
    """Return the git blob id of these bytes."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _file_blob_id(path: str, size: int) -> str:
    digest = hashlib.sha1(b'blob %d\0' % size)
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
