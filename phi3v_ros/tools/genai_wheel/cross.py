"""
The Jetson wheel built on an x86_64 machine: ``--cross`` (docs/jetson.md, section 4d).

Where each part comes from (checked by ``check_cross`` before anything runs):

- the compilers: GCC for aarch64 (``aarch64-linux-gnu-gcc``/``-g++``, Debian's and Ubuntu's
  ``g++-aarch64-linux-gnu``) with its own sysroot; the glibc symbols the wheel ends up needing
  are compared with the Jetson's after the build (``read_wheel``), since the cross glibc may be
  newer than Ubuntu 22.04's 2.35;
- CUDA: a CUDA 12 toolkit whose ``nvcc`` runs here, with the aarch64 headers and libraries in
  ``targets/aarch64-linux/`` (NVIDIA's layout: Ubuntu's ``cuda-cross-aarch64-12-x`` packages, or
  the folder docs/jetson.md 4d assembles from Debian's CUDA 12.4 packages). Its minor must not be
  newer than JetPack's 12.6: the wheel runs on JetPack's own libcudart, and the CUDA libraries are
  needed by their sonames only, which do not change within CUDA 12;
- ONNX Runtime: its C API headers, and any aarch64 ``libonnxruntime.so`` for CMake's existence
  check: onnxruntime-genai loads ONNX Runtime at run time (``_ORT_GENAI_USE_DLOPEN``), so on the
  Jetson the onnxruntime-gpu installed there is what runs; PyPI's CPU ``onnxruntime`` aarch64
  wheel will do for the build;
- Python: the Jetson's Python headers (``Python.h``, and an aarch64 ``pyconfig.h``), and an
  interpreter of the same minor here, which runs build.py and makes the wheel
  (``_PYTHON_HOST_PLATFORM`` gives it the ``linux_aarch64`` tag; pybind11 is told the target's
  extension suffix instead of asking this interpreter).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import re
import shlex
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple
import zipfile

from .gpu_code import gpu_code, runs_on
from .platform import parse_nvcc_version, run_command
from .versions import parse_version

TARGET_DIR = 'aarch64-linux'           # NVIDIA's name for the Jetson (L4T) target of a toolkit
ELF_MACHINES = {62: 'x86_64', 183: 'aarch64'}
# what the CUDA build compiles and links (CMakeLists.txt of 0.5 to 0.15, cuda_libs.py)
CUDA_HEADERS = ('cuda_runtime.h', 'curand_kernel.h', 'cublas_v2.h', 'cufft.h', 'cub/cub.cuh')
CUDA_LIBRARIES = ('libcudart.so', 'libcublas.so', 'libcublasLt.so', 'libcurand.so',
                  'libcufft.so', 'libcudadevrt.a')
# The libraries a JetPack 6 (L4T R36, CUDA 12.x, Ubuntu 22.04) Jetson has by these sonames.
JETPACK6_CUDA_SONAMES = frozenset({'libcudart.so.12', 'libcublas.so.12', 'libcublasLt.so.12',
                                   'libcurand.so.10', 'libcufft.so.11'})
SYSTEM_SONAMES = frozenset({'libc.so.6', 'libm.so.6', 'libstdc++.so.6', 'libgcc_s.so.1',
                            'libdl.so.2', 'libpthread.so.0', 'librt.so.1',
                            'ld-linux-aarch64.so.1'})
# Ubuntu 22.04 (JetPack 6): glibc 2.35, libstdc++ of GCC 12 (GLIBCXX_3.4.30, CXXABI_1.3.13)
UBUNTU_2204_SYMBOLS = {'GLIBC': '2.35', 'GLIBCXX': '3.4.30', 'CXXABI': '1.3.13'}
JETPACK6_CUDA = '12.6'


class CrossError(RuntimeError):
    """The cross build's parts are missing, or the wheel would not run on the target."""


@dataclass(frozen=True)
class CrossBuild:
    """What ``--cross`` needs beyond a native build."""

    prefix: str                        # of the cross compilers: aarch64-linux-gnu-
    python_include: Path               # the target Python's headers (Python.h, pyconfig.h)
    python_version: str                # the target's Python, '3.10'
    emulator: List[str] = field(default_factory=list)   # runs the target Python here (qemu)
    # guidance (llguidance, Rust) for aarch64 needs Rust's standard library for that target
    rust_target_installed: bool = False
    cuda_home: Optional[Path] = None   # --cuda-home
    cuda_version: Optional[str] = None   # its nvcc's release, '12.4'; None: no nvcc runs there

    @property
    def ext_suffix(self) -> str:
        return f'.cpython-{self.python_version.replace(".", "")}-aarch64-linux-gnu.so'


RUST_TARGET = 'aarch64-unknown-linux-gnu'


def rust_target_installed() -> bool:
    """Return True when rustc has the standard library for aarch64 Linux (rustup target add)."""
    status, text = run_text(['rustc', '--print', 'target-libdir', '--target', RUST_TARGET])
    return status == 0 and any(Path(text.strip()).glob('libstd-*.rlib'))


def guidance_settings(prefix: str) -> Tuple[List[str], Dict[str, str]]:
    """
    Return the CMake defines and environment that build llguidance for aarch64.

    Corrosion (the CMake side of the Rust build) compiles the crate for Rust_CARGO_TARGET; cargo
    links its build scripts for this machine and anything for the target with the cross GCC.
    """
    variable = f'CARGO_TARGET_{RUST_TARGET.upper().replace("-", "_")}_LINKER'
    return [f'Rust_CARGO_TARGET={RUST_TARGET}'], {variable: f'{prefix}gcc'}


def toolchain_file(prefix: str) -> str:
    """Return the CMake toolchain file of the aarch64 cross build."""
    return '\n'.join([
        '# written by build_genai_wheel --cross: aarch64 Linux (Jetson), compiled here',
        'set(CMAKE_SYSTEM_NAME Linux)',
        'set(CMAKE_SYSTEM_PROCESSOR aarch64)',
        f'set(CMAKE_C_COMPILER {prefix}gcc)',
        f'set(CMAKE_CXX_COMPILER {prefix}g++)',
        f'set(CMAKE_CUDA_HOST_COMPILER {prefix}g++)',
        # the wheel's CUDA library links libcudart.so.12 (JetPack's), not a static copy
        'set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)',
        # nvcc, cmake and python are this machine's programs
        'set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)',
        ''])


def cmake_defines(cross: CrossBuild, toolchain: Path) -> List[str]:
    """Return the -D settings (without -D) the cross build adds to build.py's CMake call."""
    include = str(cross.python_include)
    return [f'CMAKE_TOOLCHAIN_FILE={toolchain}',
            f'CMAKE_CUDA_HOST_COMPILER={cross.prefix}g++',
            f'Python_INCLUDE_DIR={include}', f'PYTHON_INCLUDE_DIR={include}',
            # pybind11 would ask this machine's interpreter (x86_64) for the suffix
            f'PYTHON_MODULE_EXTENSION={cross.ext_suffix}', 'PYTHON_MODULE_DEBUG_POSTFIX=']


def run_text(argv: Sequence[str], timeout: float = 60.0) -> Tuple[int, str]:
    """Run a command (platform.run_command); return (exit status, stdout + stderr)."""
    result = run_command(argv, timeout)
    return result.returncode, result.stdout + result.stderr


def nvcc_version(cuda_home: Path) -> Optional[str]:
    """Return the release of a toolkit's nvcc ('12.4'), None when it does not run here."""
    status, text = run_text([str(Path(cuda_home) / 'bin' / 'nvcc'), '--version'])
    version = parse_nvcc_version(text) if status == 0 else None
    return '.'.join(version.split('.')[:2]) if version else None


def check_cross(cross: CrossBuild, host_python_version: Optional[str],
                ort_lib_dir: Optional[Path], min_gcc: str, machine: str) -> List[Tuple[str, str]]:
    """Return (what is wrong, the fix) for each part the cross build lacks; [] when all fit."""
    problems: List[Tuple[str, str]] = []
    if machine in ('aarch64', 'arm64'):
        problems.append(('--cross builds on an x86_64 machine; this one is aarch64',
                         'on a Jetson run the builder without --cross; on an aarch64 server, '
                         'use --non-jetson'))
    gxx = f'{cross.prefix}g++'
    status, text = run_text([gxx, '-dumpfullversion'])
    if status != 0:
        problems.append((f'no aarch64 C++ compiler {gxx}',
                         'sudo apt install g++-aarch64-linux-gnu   (or --cross-prefix the '
                         "prefix of yours, e.g. 'aarch64-none-linux-gnu-')"))
    elif parse_version(text.strip()) < parse_version(min_gcc):
        problems.append((f'{gxx} is GCC {text.strip()}, older than the {min_gcc} this release '
                         'needs', 'install a newer g++-aarch64-linux-gnu'))
    problems += _check_cuda(cross.cuda_home, cross.cuda_version)
    problems += _check_python(cross, host_python_version)
    if ort_lib_dir is None:
        problems.append(('no aarch64 ONNX Runtime library (--ort-source)',
                         'pip download --no-deps --only-binary=:all: --platform '
                         'manylinux_2_28_aarch64 --python-version 3.10 onnxruntime==<version> '
                         '-d ort && unzip ort/*.whl -d ort; then --ort-source ort/onnxruntime'
                         '/capi (or the folder of the onnxruntime-gpu you install on the '
                         'Jetson)'))
    else:
        libs = sorted(Path(ort_lib_dir).glob('libonnxruntime.so*'))
        machines = {elf_machine(lib) for lib in libs if not lib.is_symlink()}
        if libs and machines != {'aarch64'}:
            found = ', '.join(sorted(map(str, machines)))
            problems.append((f'{ort_lib_dir} holds an ONNX Runtime for {found}, not aarch64',
                             'give --ort-source the aarch64 libraries'))
    if cross.emulator:
        # what the checks import: the engine (numpy, OpenCV), make_tiny_model (onnx, tokenizers)
        status, text = run_text(cross.emulator + ['-c', 'import sys, onnxruntime, numpy, onnx, '
                                                  'tokenizers, cv2; print(sys.version_info[:2])'],
                                120.0)
        want = str(tuple(int(x) for x in cross.python_version.split('.')))
        if status != 0 or want not in text:
            problems.append((f'the emulated Python ({shlex.join(cross.emulator)}) does not run '
                             f'Python {cross.python_version} with onnxruntime, numpy, onnx, '
                             f'tokenizers and OpenCV: '
                             f'{text.strip().splitlines()[-1] if text.strip() else status}',
                             'see docs/jetson.md 4d for the aarch64 Python and its packages, '
                             'or leave out --emulator-python'))
    return problems


def _check_cuda(cuda_home: Optional[Path], version: Optional[str]) -> List[Tuple[str, str]]:
    fix = ('give --cuda-home a CUDA 12 toolkit with the aarch64 target: on Ubuntu 22.04 '
           "NVIDIA's cuda-nvcc-12-6 and cuda-cross-aarch64-12-6 packages (/usr/local/cuda-12.6), "
           'or the folder docs/jetson.md 4d assembles from Debian packages')
    if cuda_home is None:
        return [('no CUDA toolkit for the cross build (--cuda-home)', fix)]
    if version is None:
        return [(f'{cuda_home}/bin/nvcc does not run here', fix)]
    problems = []
    if parse_version(version)[:1] != (12,) or \
            parse_version(version) > parse_version(JETPACK6_CUDA):
        problems.append((f'{cuda_home} is CUDA {version}: a JetPack 6 wheel needs CUDA 12, '
                         f'at most {JETPACK6_CUDA} (a newer toolkit can use runtime functions '
                         "JetPack's libcudart lacks; CUDA 13 does not run on its driver)", fix))
    target = Path(cuda_home) / 'targets' / TARGET_DIR
    missing = [h for h in CUDA_HEADERS if not (target / 'include' / h).exists()]
    missing += [lib for lib in CUDA_LIBRARIES if not (target / 'lib' / lib).exists()]
    if missing:
        problems.append((f'{target} lacks {", ".join(missing)}', fix))
    else:
        wrong = elf_machine(target / 'lib' / 'libcudart.so')
        if wrong != 'aarch64':
            problems.append((f'{target}/lib/libcudart.so is {wrong}, not aarch64', fix))
    return problems


def _check_python(cross: CrossBuild, host_version: Optional[str]) -> List[Tuple[str, str]]:
    problems = []
    include = Path(cross.python_include)
    fix = ("give --target-python-include the Jetson's /usr/include/python3.10 (copy it from the "
           'Jetson, whose python3.10-dev has it), or the include/python3.10 folder of an '
           'aarch64 CPython 3.10 (docs/jetson.md 4d)')
    if not (include / 'Python.h').is_file() or not (include / 'pyconfig.h').is_file():
        return [(f'{include} has no Python.h and pyconfig.h', fix)]
    patch = (include / 'patchlevel.h').read_text(errors='replace') \
        if (include / 'patchlevel.h').is_file() else ''
    match = re.search(r'#define PY_VERSION\s+"(\d+\.\d+)', patch)
    if match is None or match.group(1) != cross.python_version:
        problems.append((f'{include} is not Python {cross.python_version} '
                         f'({match.group(1) if match else "no PY_VERSION"})', fix))
    if host_version and '.'.join(host_version.split('.')[:2]) != cross.python_version:
        problems.append((f'the Python that runs the build is {host_version}, not '
                         f'{cross.python_version}: the wheel takes its tag (cp' +
                         cross.python_version.replace('.', '') + ') from it',
                         f'--python a python{cross.python_version} of this machine (e.g. '
                         f'pyenv install {cross.python_version}, then a venv with setuptools, '
                         'wheel and requests)'))
    return problems


# ----------------------------------------------------------------------------- reading the wheel

def elf_machine(path: Path) -> Optional[str]:
    """Return the ELF machine of a file ('aarch64', 'x86_64', 'em=N'), None if not ELF."""
    try:
        with open(path, 'rb') as stream:
            head = stream.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b'\x7fELF':
        return None
    machine = int.from_bytes(head[18:20], 'little' if head[5] == 1 else 'big')
    return ELF_MACHINES.get(machine, f'em={machine}')


@dataclass
class LibraryReport:
    name: str
    machine: Optional[str]
    needed: List[str]
    symbol_versions: Dict[str, str]       # GLIBC -> highest version needed, ...
    gpu: List[str]


def _readelf() -> str:
    for name in ('aarch64-linux-gnu-readelf', 'readelf'):
        if run_text([name, '--version'])[0] == 0:
            return name
    raise CrossError('readelf is missing: sudo apt install binutils')


def _needed_and_versions(readelf: str, path: Path) -> Tuple[List[str], Dict[str, str]]:
    status, dynamic = run_text([readelf, '-d', '-W', str(path)])
    needed = re.findall(r'\(NEEDED\)\s+Shared library: \[([^\]]+)\]', dynamic)
    status, versions = run_text([readelf, '-V', '-W', str(path)])
    highest: Dict[str, str] = {}
    for family, version in re.findall(r'Name: (GLIBC|GLIBCXX|CXXABI|GCC)_([\d.]+)', versions):
        if family not in highest or parse_version(version) > parse_version(highest[family]):
            highest[family] = version
    return needed, highest


def read_wheel(wheel: Path, compute_capability: str) -> List[LibraryReport]:
    """Read each shared library of the wheel as a Jetson would load it."""
    readelf = _readelf()
    reports = []
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        for info in archive.infolist():
            base = info.filename.rsplit('/', 1)[-1]
            if not (base.endswith('.so') or '.so.' in base):
                continue
            path = Path(archive.extract(info, tmp))
            needed, versions = _needed_and_versions(readelf, path)
            with open(path, 'rb') as stream:
                codes = gpu_code(stream)
            used = runs_on(codes, compute_capability) if codes else None
            gpu = [str(c) for c in codes] + ([f'runs on sm_{compute_capability}: {used}']
                                             if used else [])
            reports.append(LibraryReport(info.filename, elf_machine(path), needed, versions,
                                         gpu))
    return reports


def wheel_problems(wheel: Path, reports: List[LibraryReport], compute_capability: str,
                   python_version: str) -> List[str]:
    """Return why the wheel would not load or run on a JetPack 6 Jetson ([] when it would)."""
    problems = []
    tag = 'cp' + python_version.replace('.', '')
    if not Path(wheel).name.endswith(f'-{tag}-{tag}-linux_aarch64.whl'):
        problems.append(f'{Path(wheel).name} is not tagged {tag}-{tag}-linux_aarch64')
    if not reports:
        problems.append('the wheel holds no shared library')
    own = {Path(r.name).name for r in reports}
    for report in reports:
        base = Path(report.name).name
        if report.machine != 'aarch64':
            problems.append(f'{base} is {report.machine}, not aarch64')
        for soname in report.needed:
            if soname not in own and soname not in SYSTEM_SONAMES and \
                    soname not in JETPACK6_CUDA_SONAMES:
                problems.append(f'{base} needs {soname}, which a JetPack 6 Jetson does not have')
        for family, version in report.symbol_versions.items():
            limit = UBUNTU_2204_SYMBOLS.get(family)
            if limit and parse_version(version) > parse_version(limit):
                problems.append(f'{base} needs {family}_{version}, newer than the '
                                f'{family}_{limit} of Ubuntu 22.04')
        if report.gpu and not any(line.startswith('runs on') for line in report.gpu):
            problems.append(f'{base} has no GPU code for sm_{compute_capability}')
    if not any(r.gpu for r in reports):
        problems.append('no library holds GPU code: not a CUDA build')
    if not any(Path(r.name).name.endswith(f'.cpython-{tag[2:]}-aarch64-linux-gnu.so')
               for r in reports):
        problems.append(f'no Python extension for {tag} aarch64 '
                        f'(onnxruntime_genai.cpython-{tag[2:]}-aarch64-linux-gnu.so)')
    return problems


def render_reports(reports: List[LibraryReport]) -> List[str]:
    lines = []
    for report in reports:
        lines.append(f'{report.name}: ELF {report.machine}')
        lines.append(f'    needs: {", ".join(report.needed) or "-"}')
        versions = ', '.join(f'{k}_{v}' for k, v in sorted(report.symbol_versions.items()))
        lines.append(f'    highest symbol versions: {versions or "-"}')
        if report.gpu:
            lines.append(f'    GPU code: {"; ".join(report.gpu)}')
    return lines
