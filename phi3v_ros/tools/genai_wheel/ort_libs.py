"""
Find ONNX Runtime GPU libraries and headers, and gather them into the build's ``ort/`` folder.

onnxruntime-genai's CMake (with ``--ort_home DIR``) wants ``DIR/include/onnxruntime_c_api.h`` (plus
``onnxruntime_float16.h``) and ``DIR/lib/libonnxruntime.so`` (the unversioned name, which Python
wheels and release folders do not ship) with ``libonnxruntime_providers_cuda.so`` next to it.

Sources, in the order ``auto`` tries them:
1. the onnxruntime-gpu Python package of the ROS interpreter (``onnxruntime/capi``: libraries
   only);
2. a folder the user names: an extracted ONNX Runtime release, an install prefix, or a build
   folder;
3. a container image (``docker create`` + ``docker cp``), only when docker is there and an image
   is named.
Headers missing from the source come from the pinned ONNX Runtime source archive (see
``download``).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
import mmap
import os
from pathlib import Path
import re
import shutil
from typing import List, Optional

from .gpu_code import gpu_code, GpuCode
from .versions import parse_version

CUDA_PROVIDER = 'libonnxruntime_providers_cuda.so'
SHARED_PROVIDER = 'libonnxruntime_providers_shared.so'
REQUIRED_HEADERS = ('onnxruntime_c_api.h', 'onnxruntime_float16.h')
# where a container image built like jetson-containers' onnxruntime package keeps ONNX Runtime
IMAGE_LIB_DIR = '/usr/local/lib'
IMAGE_INCLUDE_DIR = '/usr/local/include/onnxruntime'

_LIB_DIR_CANDIDATES = ('lib', 'lib64', '.', 'capi', 'onnxruntime/capi', 'build/Linux/Release',
                       'usr/local/lib', 'usr/lib')
_HEADER_DIR_CANDIDATES = ('include', 'include/onnxruntime', 'include/onnxruntime/core/session',
                          'usr/local/include/onnxruntime', 'usr/local/include', '.')


class OrtError(RuntimeError):
    """The ONNX Runtime libraries or headers are missing or unusable; the message says the fix."""


@dataclass
class OrtSource:
    kind: str                          # 'python', 'folder', 'docker'
    origin: str                        # what the user would recognise: a path or an image name
    lib_dir: Optional[Path] = None
    header_dir: Optional[Path] = None
    version: Optional[str] = None      # X.Y.Z of the library
    main_lib: Optional[str] = None     # file name of the real libonnxruntime.so.X.Y.Z (or .so.1)
    libs: List[str] = field(default_factory=list)   # file names to copy
    cuda_major: Optional[int] = None   # CUDA major the CUDA provider links against
    cudnn_major: Optional[int] = None
    header_api: Optional[int] = None   # ORT_API_VERSION of the headers
    # the GPU code of the CUDA provider library (gpu_code), None when not read
    gpu_codes: Optional[List[GpuCode]] = None

    @property
    def has_cuda_provider(self) -> bool:
        return CUDA_PROVIDER in self.libs

    def describe(self) -> str:
        parts = [f'{self.kind} {self.origin}']
        if self.version:
            parts.append(f'ONNX Runtime {self.version}')
        parts.append('CUDA provider present' if self.has_cuda_provider else 'NO CUDA provider')
        if self.cuda_major:
            parts.append(f'built for CUDA {self.cuda_major}' +
                         (f' / cuDNN {self.cudnn_major}' if self.cudnn_major else ''))
        parts.append(f'headers in {self.header_dir}' if self.header_dir else 'no headers')
        return ', '.join(parts)


def header_api_version(header_text: str) -> Optional[int]:
    match = re.search(r'#define\s+ORT_API_VERSION\s+(\d+)', header_text or '')
    return int(match.group(1)) if match else None


_VERS_RE = re.compile(rb'VERS_(\d+\.\d+\.\d+)')


def library_version(path: Path) -> Optional[str]:
    """
    Return the X.Y.Z of a libonnxruntime.

    Read from its file name, else from its symbol version tags (VERS_1.22.0).
    """
    match = re.match(r'libonnxruntime\.so\.(\d+\.\d+\.\d+)$', path.name)
    if match:
        return match.group(1)
    try:
        with mapped(path) as data:
            versions = {m.group(1).decode() for m in _VERS_RE.finditer(data)}
    except OSError:
        return None
    return max(versions, key=parse_version) if versions else None


@contextmanager
def mapped(path: Path):
    """Map a file read-only: a provider library is hundreds of MB, and boards have 8 GB."""
    with open(path, 'rb') as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b''       # an empty file cannot be mapped
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def _first_number(pattern: bytes, data) -> Optional[int]:
    match = re.search(pattern, data)
    return int(match.group(1)) if match else None


def linked_majors(path: Path) -> (Optional[int], Optional[int]):
    """
    Return the (CUDA major, cuDNN major) a provider library was linked against.

    Read from its DT_NEEDED names.
    """
    try:
        with mapped(path) as data:
            # the numbers are read while the file is mapped: a match refers to it
            cuda = _first_number(rb'lib(?:cudart|cublas)\.so\.(\d+)', data)
            cudnn = _first_number(rb'libcudnn\.so\.(\d+)', data)
    except OSError:
        return None, None
    return cuda, cudnn


def _main_library(lib_dir: Path) -> Optional[Path]:
    """Find the real (versioned) libonnxruntime in a folder, preferring libonnxruntime.so.X.Y.Z."""
    versioned = sorted((p for p in lib_dir.glob('libonnxruntime.so.*')
                        if re.match(r'libonnxruntime\.so\.\d+\.\d+\.\d+$',
                                    p.name) and not p.is_symlink()),
                       key=lambda p: parse_version(p.name[len('libonnxruntime.so.'):]))
    if versioned:
        return versioned[-1]
    for name in ('libonnxruntime.so.1', 'libonnxruntime.so'):
        candidate = lib_dir / name
        if candidate.exists():
            return candidate
    return None


def find_lib_dir(folder: Path) -> Optional[Path]:
    for sub in _LIB_DIR_CANDIDATES:
        candidate = (folder / sub)
        if candidate.is_dir() and _main_library(candidate) is not None:
            return candidate
    return None


def find_header_dir(folder: Path) -> Optional[Path]:
    for sub in _HEADER_DIR_CANDIDATES:
        candidate = folder / sub
        if (candidate / 'onnxruntime_c_api.h').is_file():
            return candidate
    return None


def inspect(kind: str, origin: str, lib_dir: Optional[Path],
            header_dir: Optional[Path]) -> OrtSource:
    source = OrtSource(kind=kind, origin=origin, lib_dir=lib_dir, header_dir=header_dir)
    if lib_dir is not None:
        main = _main_library(lib_dir)
        if main is not None:
            source.main_lib = main.name
            source.version = library_version(main)
            source.libs.append(main.name)
        for name in (CUDA_PROVIDER, SHARED_PROVIDER, 'libonnxruntime_providers_tensorrt.so'):
            if (lib_dir / name).exists():
                source.libs.append(name)
        if source.has_cuda_provider:
            source.cuda_major, source.cudnn_major = linked_majors(lib_dir / CUDA_PROVIDER)
            try:
                with open(lib_dir / CUDA_PROVIDER, 'rb') as library:
                    source.gpu_codes = gpu_code(library)
            except (OSError, ValueError):      # unreadable, or beyond gpu_code's bounds: unknown
                source.gpu_codes = None
    if header_dir is not None:
        try:
            source.header_api = header_api_version((header_dir / 'onnxruntime_c_api.h').read_text(
                encoding='utf-8', errors='replace'))
        except OSError:
            source.header_api = None
    return source


def from_folder(folder: Path, origin: Optional[str] = None) -> OrtSource:
    """
    Inspect an extracted release, install prefix or build folder.

    It gives libraries and, if present, headers.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OrtError(f'{folder} is not a folder: give --ort-source an extracted ONNX Runtime '
                       'release or build folder (with lib/libonnxruntime.so.* and '
                       'include/onnxruntime_c_api.h)')
    lib_dir = find_lib_dir(folder)
    if lib_dir is None:
        raise OrtError(f'no libonnxruntime.so* under {folder} (looked in '
                       f'{", ".join(_LIB_DIR_CANDIDATES)}): give the folder of a Jetson (CUDA) '
                       'ONNX Runtime build or release')
    return inspect('folder', origin or str(folder), lib_dir, find_header_dir(folder))


def from_python_package(capi_dir: Path, origin: Optional[str] = None) -> OrtSource:
    """Inspect the onnxruntime(-gpu) Python package's capi folder: libraries only, no headers."""
    capi_dir = Path(capi_dir)
    if not capi_dir.is_dir() or _main_library(capi_dir) is None:
        raise OrtError(f'the onnxruntime package at {origin or capi_dir} has no '
                       'libonnxruntime.so* (onnxruntime-gpu 1.19 and newer ship it): install a '
                       'newer onnxruntime-gpu')
    return inspect('python', origin or str(capi_dir), capi_dir, None)


def docker_commands(image: str, dest: Path, container: str) -> List[List[str]]:
    """Return the commands that copy ONNX Runtime out of an image without running it."""
    lib, inc = dest / 'lib', dest / 'include'
    return [
        ['docker', 'rm', '-f', container],
        ['docker', 'create', '--name', container, image],
        ['mkdir', '-p', str(lib), str(inc)],
        ['docker', 'cp', '-L', f'{container}:{IMAGE_LIB_DIR}/libonnxruntime.so.1',
         str(lib / 'libonnxruntime.so.1')],
        ['docker', 'cp', '-L', f'{container}:{IMAGE_LIB_DIR}/{CUDA_PROVIDER}',
         str(lib / CUDA_PROVIDER)],
        ['docker', 'cp', '-L', f'{container}:{IMAGE_LIB_DIR}/{SHARED_PROVIDER}',
         str(lib / SHARED_PROVIDER)],
        ['docker', 'cp', f'{container}:{IMAGE_INCLUDE_DIR}/.', str(inc)],
        ['docker', 'rm', '-f', container],
    ]


def gather_plan(source: OrtSource, dest: Path, need_cuda_provider: bool = True) -> List[str]:
    """Human-readable lines of what ``gather`` will do (for --dry-run)."""
    lines = []
    lib_dest = dest / 'lib'
    for name in source.libs:
        lines.append(f'copy {Path(source.lib_dir) / name} -> {lib_dest / name}')
    main = source.main_lib or 'libonnxruntime.so.1'
    if main != 'libonnxruntime.so.1':
        lines.append(f'ln -sf {main} {lib_dest / "libonnxruntime.so.1"}')
    lines.append(f'ln -sf {main} {lib_dest / "libonnxruntime.so"}'
                 '   # the unversioned name CMake links')
    if source.header_dir:
        lines.append(f'copy {Path(source.header_dir)}/*.h -> {dest / "include"}/')
    if need_cuda_provider:
        lines.append(f'check {lib_dest / CUDA_PROVIDER} exists (the CUDA execution provider)')
    else:
        lines.append('(a cross build compiles against it only: the Jetson loads its own '
                     'onnxruntime-gpu at run time)')
    return lines


def gather(source: OrtSource, dest: Path, need_cuda_provider: bool = True) -> List[str]:
    """
    Copy libraries (and headers, if the source has them) into dest/lib and dest/include.

    Creates the unversioned ``libonnxruntime.so`` link and verifies the CUDA provider is there
    (unless ``need_cuda_provider`` is False: a cross build only compiles against it). Returns the
    lines it did. Idempotent: rerunning replaces the files.
    """
    if source.lib_dir is None or not source.libs:
        raise OrtError(f'no ONNX Runtime libraries in {source.origin}')
    if need_cuda_provider and not source.has_cuda_provider:
        raise OrtError(
            f'{source.origin} has no {CUDA_PROVIDER}: it is a CPU-only ONNX Runtime (for example '
            f'the `onnxruntime` package from PyPI); use an onnxruntime-gpu build for Jetson')
    lib_dest, inc_dest = Path(dest) / 'lib', Path(dest) / 'include'
    lib_dest.mkdir(parents=True, exist_ok=True)
    inc_dest.mkdir(parents=True, exist_ok=True)
    done = []
    for name in source.libs:
        target = lib_dest / name
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copy2(Path(source.lib_dir) / name, target)   # follows symlinks: copies the content
        done.append(f'copied {name}')
    main = source.main_lib or 'libonnxruntime.so.1'
    for link in ('libonnxruntime.so.1', 'libonnxruntime.so'):
        if link == main:
            continue
        path = lib_dest / link
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(main, path)
        done.append(f'linked {link} -> {main}')
    if source.header_dir:
        for header in sorted(Path(source.header_dir).glob('*.h')):
            shutil.copy2(header, inc_dest / header.name)
        done.append(f'copied headers from {source.header_dir}')
    verify_ort_home(dest, need_headers=bool(source.header_dir),
                    need_cuda_provider=need_cuda_provider)
    return done


def verify_ort_home(dest: Path, need_headers: bool = True, min_api: Optional[int] = None,
                    need_cuda_provider: bool = True) -> Optional[int]:
    """Check the folder passed as --ort_home; returns the headers' ORT_API_VERSION."""
    dest = Path(dest)
    lib = dest / 'lib'
    if not (lib / 'libonnxruntime.so').exists():
        raise OrtError(f'{lib}/libonnxruntime.so is missing (or a dangling link): rerun the '
                       f'builder so it gathers the libraries again')
    if need_cuda_provider and not (lib / CUDA_PROVIDER).exists():
        raise OrtError(f'{lib}/{CUDA_PROVIDER} is missing: the build would produce a wheel '
                       'without CUDA; use an ONNX Runtime built with CUDA '
                       '(onnxruntime-gpu for Jetson)')
    if not need_headers:
        return None
    missing = [h for h in REQUIRED_HEADERS if not (dest / 'include' / h).exists()]
    if missing:
        raise OrtError(f'{dest / "include"} lacks {", ".join(missing)}: give --ort-headers DIR, '
                       f'or let the builder download the pinned ONNX Runtime source archive')
    header = dest / 'include' / 'onnxruntime_c_api.h'
    api = header_api_version(header.read_text(encoding='utf-8', errors='replace'))
    if min_api is not None and api is not None and api < min_api:
        raise OrtError(f'the ONNX Runtime headers in {dest / "include"} have C API {api}, older '
                       f'than the {min_api} this onnxruntime-genai needs: use headers of ONNX '
                       f'Runtime 1.{min_api} or newer')
    return api


def source_summary_for_preset(capi_dir: str, version: str, cuda_major: int) -> OrtSource:
    """Describe the onnxruntime-gpu package of a --target preset as it would be (for --dry-run)."""
    return OrtSource(kind='python', origin=f'onnxruntime-gpu {version} ({capi_dir})',
                     lib_dir=Path(capi_dir),
                     version=version, main_lib=f'libonnxruntime.so.{version}',
                     libs=[f'libonnxruntime.so.{version}', CUDA_PROVIDER, SHARED_PROVIDER],
                     cuda_major=cuda_major, cudnn_major=9 if cuda_major >= 12 else 8)
