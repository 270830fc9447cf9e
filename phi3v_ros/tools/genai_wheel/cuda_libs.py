"""
The CUDA libraries onnxruntime-genai's CUDA build links, from the toolkit or from pip packages.

Every release from 0.5 to 0.15 links ``onnxruntime-genai-cuda`` with cublasLt, cublas, curand,
cufft and cudart (``target_link_libraries`` in its CMakeLists.txt) and compiles
``curand_kernel.h``. JetPack's toolkit has them all. A toolkit that holds only the compiler (a
CI image with ``nvcc``, a conda ``cuda-nvcc``) does not; the NVIDIA wheels on PyPI carry the same
headers and libraries: for CUDA 13 ``nvidia-cublas``, ``nvidia-curand``, ``nvidia-cufft`` under
``site-packages/nvidia/cu13/``, for CUDA 12 ``nvidia-cublas-cu12`` and so on under
``site-packages/nvidia/<library>/``, but only with versioned names (``libcublas.so.13``), which
``-lcublas`` does not find. Only packages of the toolkit's CUDA major are taken (by their folder):
a CUDA 12 build linked against CUDA 13's cuBLAS would not load.
``--cuda-libs python`` gathers them into one folder with the unversioned names and hands it to
the compilers through ``CPATH`` and ``LIBRARY_PATH``, which GCC and nvcc (through GCC) read.
"""
from __future__ import annotations

from pathlib import Path
import re
from typing import Dict, Iterable, List, Optional

HEADERS = ('curand_kernel.h', 'cublas_v2.h', 'cufft.h')
LIBRARIES = ('cublasLt', 'cublas', 'curand', 'cufft', 'cudart')
# the pip packages that hold them (cudart comes with the toolkit's nvcc); up to CUDA 12 their
# names end in -cu<major> (nvidia-cublas-cu12), from CUDA 13 on they do not
PIP_PACKAGES = {'cublas': 'nvidia-cublas', 'cublasLt': 'nvidia-cublas',
                'curand': 'nvidia-curand', 'cufft': 'nvidia-cufft',
                'cudart': 'nvidia-cuda-runtime'}
_MAJOR_FOLDER = re.compile(r'^cu(\d+)$')


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():    # is_symlink: a link whose target is gone
        link.unlink()
    link.symlink_to(target)


class CudaLibsError(RuntimeError):
    """The CUDA libraries the build links are not where they were looked for."""


def _toolkit_dirs(cuda: Path, kind: str) -> List[Path]:
    dirs = [cuda / kind]
    if kind == 'lib':
        dirs.append(cuda / 'lib64')
    dirs += sorted((cuda / 'targets').glob(f'*-linux/{kind}'))
    return dirs


def toolkit_missing(cuda: Path) -> List[str]:
    """Return the headers and libraries (as -l names) the toolkit at ``cuda`` lacks."""
    cuda = Path(cuda)
    missing = [h for h in HEADERS
               if not any((d / h).exists() for d in _toolkit_dirs(cuda, 'include'))]
    missing += [f'lib{name}.so' for name in LIBRARIES
                if not any((d / f'lib{name}.so').exists() for d in _toolkit_dirs(cuda, 'lib'))]
    return missing


def pip_packages_for(missing: Iterable[str], cuda_major: Optional[int]) -> List[str]:
    """Return the PyPI packages of this CUDA major that provide these headers and libraries."""
    suffix = f'-cu{cuda_major}' if cuda_major and cuda_major <= 12 else ''
    names = set()
    for item in missing:
        stem = re.sub(r'^lib|\.so$|(_v2)?\.h$|_kernel', '', item)
        names.add(PIP_PACKAGES.get(stem, f'nvidia-{stem}') + suffix)
    return sorted(names)


# Run by the Python that has the NVIDIA packages (nvidia is a namespace package): its folders.
NVIDIA_PATHS_CODE = 'import nvidia; print("\\n".join(nvidia.__path__))'


def site_packages_from(returncode: int, stdout: str) -> List[Path]:
    """Return the site-packages folders that hold nvidia/, from NVIDIA_PATHS_CODE's run."""
    if returncode != 0:
        return []
    return [Path(line).parent for line in stdout.splitlines() if line.strip()]


def nvidia_folders(site_packages: Iterable[Path], cuda_major: Optional[int]) -> List[Path]:
    """
    Return the folders under ``nvidia/`` of these site-packages with include/ or lib/.

    With a CUDA major, only those of that major: ``cu13/`` for CUDA 13 and later, the
    per-library folders (``cublas/``, ``curand/``) for CUDA 12 and earlier. The folder tells,
    not the file names: cuRAND is ``libcurand.so.10`` in both.
    """
    found = []
    for root in site_packages:
        base = Path(root) / 'nvidia'
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if not ((folder / 'include').is_dir() or (folder / 'lib').is_dir()):
                continue
            major_folder = _MAJOR_FOLDER.match(folder.name)
            if cuda_major and cuda_major >= 13 and \
                    (not major_folder or int(major_folder.group(1)) != cuda_major):
                continue
            if cuda_major and cuda_major <= 12 and major_folder:
                continue
            found.append(folder)
    return found


def gather(folders: Iterable[Path], dest: Path, cuda: Path,
           cuda_major: Optional[int]) -> Dict[str, Path]:
    """
    Link the headers and libraries into ``dest/include`` and ``dest/lib`` (unversioned names).

    Only what the toolkit at ``cuda`` lacks is taken. Returns what was taken -> its origin;
    raises CudaLibsError naming the packages to install when something is still missing. Runs
    again on every build: links left by an earlier run are replaced (a pip upgrade may have
    moved their targets).
    """
    dest = Path(dest)
    include, lib = dest / 'include', dest / 'lib'
    include.mkdir(parents=True, exist_ok=True)
    lib.mkdir(parents=True, exist_ok=True)
    wanted = toolkit_missing(cuda)
    # only the headers of the missing libraries: the toolkit's own (cuda_runtime.h, ...) must
    # not be shadowed by a pip package of another CUDA minor
    stems = {re.match(r'(?:lib)?([a-z]+)', item).group(1) for item in wanted}
    if 'cufft' in stems:
        stems.add('cudalibxt')      # cufftXt.h includes it
    prefixes = tuple(sorted(stems))
    taken: Dict[str, Path] = {}
    linked = set()      # the first folder that has a file wins
    for folder in folders:
        for header in sorted((folder / 'include').glob('*.h')):
            target = include / header.name
            if prefixes and header.name.startswith(prefixes) and target not in linked:
                _link(target, header.resolve())
                linked.add(target)
        for name in LIBRARIES:
            versioned = sorted((folder / 'lib').glob(f'lib{name}.so.*'))
            link = lib / f'lib{name}.so'
            if versioned and f'lib{name}.so' in wanted and link not in linked:
                _link(link, versioned[0].resolve())
                linked.add(link)
                taken[link.name] = versioned[0]
    still = [item for item in wanted
             if not (include / item).exists() and not (lib / item).exists()]
    if still:
        raise CudaLibsError(
            f'the CUDA toolkit at {cuda} lacks {", ".join(still)} and the Python packages do '
            f'not have them either: pip install {" ".join(pip_packages_for(still, cuda_major))}, '
            "or install the toolkit's development libraries")
    for item in wanted:
        if item.endswith('.h'):
            taken[item] = (include / item).resolve()
    return taken
