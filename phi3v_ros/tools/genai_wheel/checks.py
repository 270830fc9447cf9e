"""Prerequisite checks, run before anything long: each problem says what is wrong and the fix."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from . import local_sources
from .cuda_libs import (nvidia_folders, NVIDIA_PATHS_CODE, pip_packages_for,
                        site_packages_from)
from .gpu_code import runs_on
from .ort_libs import OrtSource
from .platform import GIB, Platform, run_command
from .versions import (GUIDANCE_SINCE, ort_api_version, ORT_GPU_HINTS, parse_version,
                       version_at_least,
                       VersionChoice)

MIN_CUDA = '11.8'
BUILD_DISK_GIB = 8          # source, build tree, wheel, ONNX Runtime copy
CMAKE_PIP_SPEC = 'cmake>=3.28,<4'


@dataclass(frozen=True)
class Problem:
    level: str      # 'error' stops the build; 'warning' is printed
    what: str
    fix: str

    def __str__(self) -> str:
        return f'{self.level.upper()}: {self.what}\n       fix: {self.fix}'


def ort_hint(plat: Platform, ort: str) -> str:
    if not plat.is_jetson and not plat.synthetic:
        return (f'python3 -m pip install onnxruntime-gpu=={ort} (PyPI; its CUDA major must be the '
                "toolkit's), or --ort-source the folder of your own ONNX Runtime build")
    hint = ORT_GPU_HINTS.get(plat.jetpack_major or 6, ORT_GPU_HINTS[6])
    return hint.format(ort=ort)


def check_prerequisites(plat: Platform, choice: VersionChoice, ort: Optional[OrtSource], *,
                        install: bool, install_cmake: bool = False,
                        ort_headers_available: bool = True, docker_requested: bool = False,
                        prebuilt_only: bool = False, non_jetson: bool = False,
                        cuda_libs: str = 'toolkit', offline: bool = False,
                        guidance: str = 'auto', cross: bool = False) -> List[Problem]:
    """
    Every reason the build would fail, found before it starts.

    ``non_jetson``: building for this machine's own GPU (an x86_64 desktop, an aarch64 server),
    so no JetPack facts apply. ``offline``: no downloads at all (``--deps-dir``). ``cross``: built
    here for a Jetson (cross.py checks the cross parts): the ONNX Runtime found here is only
    compiled against, and the one that runs is the Jetson's.
    """
    problems: List[Problem] = []

    def error(what, fix):
        problems.append(Problem('error', what, fix))

    def warn(what, fix):
        problems.append(Problem('warning', what, fix))

    py = plat.python
    py_cmd = py.path if py else 'python3'

    def nvidia_packages_lack(items):
        """Return which items the Python's NVIDIA packages lack, None if it cannot be asked."""
        # as the gather_cuda_libs step finds them
        found = run_command([py.path, '-c', NVIDIA_PATHS_CODE])
        if found.returncode in (126, 127):   # run_command's: it did not start, or timed out
            return None
        folders = nvidia_folders(site_packages_from(found.returncode, found.stdout),
                                 plat.cuda.major)
        return [item for item in items if not any(
            (folder / 'include' / item).exists() if item.endswith('.h')
            else any((folder / 'lib').glob(f'{item}.*')) for folder in folders)]

    if guidance != 'off' and not prebuilt_only and \
            parse_version(choice.genai.version) >= GUIDANCE_SINCE:
        no_cargo = ('Rust is not installed: the wheel is built without guidance, so constrained '
                    'answers (requests with a format) are refused')
        fix = ('install Rust for your user (curl --proto =https -sSf https://sh.rustup.rs | sh, '
               'then a new shell), and rerun; or --guidance off to say you do not want it')
        if not plat.cargo:
            (error if guidance == 'on' else warn)(no_cargo, fix)
        elif offline and guidance == 'on':
            error("--guidance on with --deps-dir: cargo downloads llguidance's crates while "
                  'building, which an offline build cannot', 'build online for guidance, or '
                  'leave --guidance at auto (built without it)')
    elif guidance == 'on' and parse_version(choice.genai.version) < GUIDANCE_SINCE:
        error(f'--guidance on: onnxruntime-genai {choice.genai.version} has no guidance (0.8 '
              'and later)', 'choose 0.8 or later with --genai-version, or leave --guidance out')

    if non_jetson:
        if plat.is_jetson:
            warn('--non-jetson on a Jetson: the JetPack checks are skipped',
                 'leave --non-jetson out to build with the JetPack checks')
    elif plat.machine not in ('aarch64', 'arm64'):
        error(f'this machine is {plat.machine}, not a Jetson (aarch64): '
              'the wheel must be built on the Jetson',
              'run the builder on the Jetson, '
              'or review the plan here with --dry-run --target jp6-orin')
    elif not plat.is_jetson:
        warn('no /etc/nv_tegra_release: this aarch64 machine does not look like a Jetson',
             'if it is an aarch64 server with an NVIDIA GPU, '
             'pass --cuda-arch and --cuda-home yourself')

    if plat.jetpack_major is not None and plat.jetpack_major < 6:
        warn(f'JetPack {plat.jetpack.jetpack} (Ubuntu {plat.jetpack.ubuntu}, '
             f'CUDA {plat.jetpack.cuda}, Python {plat.jetpack.python}) '
             'is older than this package is tested on',
             'flash JetPack 6 (ROS 2 Humble, CUDA 12.6): '
             'the steps below will tell what else is missing')

    # --- compilers and tools ---------------------------------------------------------------------
    if not prebuilt_only:
        if plat.cuda is None:
            if not cross:   # the cross build's toolkit is check_cross's to name, with its fix
                error(f'no CUDA toolkit (bin/nvcc) under /usr/local ({plat.cuda_reason})',
                      'install the CUDA toolkit of the CUDA major your onnxruntime-gpu was '
                      'built for (or pass --cuda-home), then rerun' if non_jetson else
                      'install it: sudo apt install nvidia-jetpack (or cuda-toolkit-12-6), '
                      'then rerun')
        elif not version_at_least(plat.cuda.version, MIN_CUDA):
            error(f'CUDA {plat.cuda.version} at {plat.cuda.path} is too old: '
                  'ONNX Runtime 1.19+ (needed by every onnxruntime-genai with Phi-3-vision) '
                  f'needs CUDA {MIN_CUDA} or 12.x',
                  'upgrade to JetPack 6 (CUDA 12.2 / 12.6)')
        if plat.cuda and len(plat.cuda_installs) > 1:
            warn(f'{len(plat.cuda_installs)} CUDA toolkits are installed; '
                 f'the build uses {plat.cuda.path} ({plat.cuda_reason})',
                 'nothing to do if that is right '
                 '(the builder sets CUDA_PATH, CUDA_HOME and CUDACXX for it); '
                 'else pass --cuda-home')
        if plat.cuda and plat.jetpack and parse_version(plat.cuda.version)[:2] > \
                parse_version(plat.jetpack.cuda)[:2]:
            warn(f'CUDA {plat.cuda.version} is newer than the CUDA {plat.jetpack.cuda} of JetPack '
                 f'{plat.jetpack.jetpack}: it runs only with the matching cuda-compat package',
                 'install cuda-compat for it, '
                 f'or pass --cuda-home /usr/local/cuda-{plat.jetpack.cuda}')
        if not plat.compute_capability:
            error("the GPU's compute capability could not be read "
                  '(no device tree entry, no nvidia-smi)',
                  'pass --cuda-arch with the GPU the wheel is for, e.g. 90 (H100/H200), 89 '
                  '(RTX 40), 86 (RTX 30)' if non_jetson else
                  'pass --cuda-arch 87 (Orin), 72 (Xavier) or 110 (Thor)')
        if plat.cuda and plat.cuda_missing:
            missing = ', '.join(plat.cuda_missing)
            if cuda_libs == 'python':
                packages = ' '.join(pip_packages_for(plat.cuda_missing, plat.cuda.major))
                lacking = None if plat.synthetic or py is None or py.error else \
                    nvidia_packages_lack(plat.cuda_missing)
                if lacking is None:
                    # a --target preset: its Python is on the target, not here to ask
                    warn(f'the CUDA toolkit at {plat.cuda.path} lacks {missing}: --cuda-libs '
                         "python takes them from the Python's NVIDIA packages, which cannot be "
                         'checked from here', ('on the target: ' if plat.synthetic else '')
                         + f'{py_cmd} -m pip install {packages}')
                elif lacking:
                    error(f'the CUDA toolkit at {plat.cuda.path} lacks {missing}, and '
                          f"{py_cmd}'s NVIDIA packages, where --cuda-libs python takes them "
                          f'from, lack {", ".join(lacking)}: the build would stop when '
                          'gathering them',
                          f'{py_cmd} -m pip install '
                          + ' '.join(pip_packages_for(lacking, plat.cuda.major)))
            else:
                error(f'the CUDA toolkit at {plat.cuda.path} lacks {missing}, which '
                      'onnxruntime-genai compiles and links (cuRAND, cuBLAS, cuFFT)',
                      ("install the toolkit's development libraries (e.g. sudo apt install "
                       'cuda-libraries-dev-<major>-<minor>), or pip install '
                       + ' '.join(pip_packages_for(plat.cuda_missing, plat.cuda.major))
                       + ' into the Python and pass --cuda-libs python') if non_jetson else
                      'sudo apt install nvidia-jetpack (it brings cuda-libraries-dev)')
        if not plat.gcc:
            error('no GCC found', 'sudo apt install build-essential')
        elif not version_at_least(plat.gcc, choice.genai.min_gcc):
            release = choice.genai
            error(f'GCC {plat.gcc} is too old: the CUDA build of onnxruntime-genai '
                  f'{release.version} is C++{release.cuda_cxx_standard} and needs GCC '
                  f'{release.min_gcc} or newer',
                  'use JetPack 6 (GCC 11), '
                  'or sudo apt install gcc-11 g++-11 and export CC=gcc-11 CXX=g++-11')
        need_cmake = choice.genai.cmake_min
        if not plat.cmake or not version_at_least(plat.cmake, need_cmake):
            have = f'CMake {plat.cmake}' if plat.cmake else 'no CMake'
            if install_cmake:
                warn(f'{have}; onnxruntime-genai {choice.genai.version} needs CMake {need_cmake}',
                     '--install-cmake: the plan installs it with pip '
                     f'({CMAKE_PIP_SPEC}), into the venv or for your user')
            else:
                error(f'{have}: onnxruntime-genai {choice.genai.version} '
                      f'needs CMake {need_cmake} or newer (Ubuntu 22.04 has 3.22)',
                      f"{py_cmd} -m pip install --user '{CMAKE_PIP_SPEC}' "
                      '(then open a new shell), or rerun with --install-cmake')
        if not plat.git:
            error('git is not installed', 'sudo apt install git')
        if plat.disk_free is not None and plat.disk_free < BUILD_DISK_GIB * GIB:
            error(f'only {plat.disk_free / GIB:.1f} GiB free in the work folder; '
                  f'the build needs about {BUILD_DISK_GIB} GiB',
                  'free some space or pass --work-dir on a disk with room '
                  '(an NVMe drive, not the SD card)')
        if plat.mem_available is not None and plat.mem_available < 3 * GIB:
            warn(f'only {plat.mem_available / GIB:.1f} GiB of memory available: '
                 'the build runs with one job and may still run out of memory',
                 'close other programs '
                 '(a desktop session takes ~1 GiB: sudo systemctl isolate multi-user.target)'
                 ' and add swap (see docs/jetson.md)')

    # --- the ROS Python --------------------------------------------------------------------------
    if py is None or py.error:
        error(f'the ROS Python {py_cmd} does not run ({py.error if py else "not found"})',
              'pass --python with the interpreter ROS 2 uses (usually /usr/bin/python3)')
    else:
        if not py.has_dev_headers and not prebuilt_only:
            error(f'Python.h is missing for {py.path} ({py.include_dir})',
                  f'sudo apt install python{_short(py.version)}-dev')
        if not py.has_pip:
            error(f'{py.path} has no pip', 'sudo apt install python3-pip')
        if not prebuilt_only and 'requests' not in py.modules:
            # onnxruntime-genai's build.py imports it (tools/python/util) before doing anything
            error(f"{py.path} lacks requests, which onnxruntime-genai's build.py imports",
                  f'{py.path} -m pip install requests' + (
                      ' (or, as it is the system Python, sudo apt install python3-requests)'
                      if not py.in_venv and py.path.startswith('/usr/bin/') else ''))
        lacking = [m for m in ('setuptools', 'wheel') if m not in py.modules]
        if offline and not prebuilt_only and lacking:
            error(f'{py.path} lacks {" and ".join(lacking)}: the offline build makes the wheel '
                  'with `pip wheel --no-build-isolation`, which uses the installed ones',
                  f'{py.path} -m pip install {" ".join(lacking)}')
        missing = [m for m in ('numpy', 'onnx', 'tokenizers') if m not in py.modules]
        if install and missing:
            error(f'{py.path} lacks {", ".join(missing)}, '
                  'which the post-install check (writing the tiny test model) needs',
                  f"{py.path} -m pip install --user {' '.join(missing)} 'numpy<2'   "
                  "(numpy 2 would break ROS Humble's cv_bridge)")
        if install and 'cv2' not in py.modules:
            # the post-install generation imports the engine, which prepares images with OpenCV
            error(f'{py.path} lacks OpenCV (cv2), which the post-install check (a generation '
                  'through the engine) and the node need',
                  "sudo apt install python3-opencv   (the system's: a pip OpenCV beside it "
                  "breaks ROS's cv_bridge, see requirements/ros.txt)")
        if install and py.externally_managed and not py.in_venv:
            warn(f'{py.path} is marked externally managed (PEP 668): '
                 'pip refuses to install into it',
                 'use a venv made with --system-site-packages for ROS, or pass '
                 '--pip-args=--break-system-packages if you accept that')

    # --- ONNX Runtime ----------------------------------------------------------------------------
    need_api = ort_api_version(choice.genai.min_ort)
    if plat.jetpack and plat.jetpack.cuda == '12.2' and not prebuilt_only:
        _check_jetpack_60(plat, choice, ort, error, warn)
    if not prebuilt_only:
        if ort is None:
            error('no ONNX Runtime GPU libraries found '
                  '(no onnxruntime-gpu in the ROS Python, no --ort-source)',
                  ort_hint(plat, choice.ort) + '; or pass --ort-source DIR / --ort-image IMAGE')
        else:
            if not ort.has_cuda_provider and not cross:
                error(f'{ort.origin} has no libonnxruntime_providers_cuda.so '
                      '(a CPU-only ONNX Runtime)',
                      ort_hint(plat, choice.ort))
            if ort.version and ort_api_version(ort.version) < need_api:
                error(f'ONNX Runtime {ort.version} ({ort.origin}) '
                      f'has C API {ort_api_version(ort.version)}, '
                      f'older than the {need_api} onnxruntime-genai {choice.genai.version} needs',
                      f'install onnxruntime-gpu {choice.genai.min_ort} or newer '
                      f'({ort_hint(plat, choice.genai.min_ort)}), '
                      'or choose an older --genai-version (see --list-versions)')
            if ort.header_api is not None and ort.header_api < need_api:
                error(f'the ONNX Runtime headers in {ort.header_dir} have C API {ort.header_api}, '
                      f'older than the {need_api} onnxruntime-genai {choice.genai.version} needs',
                      'give --ort-headers with headers of a newer release '
                      '(or leave them out: the builder downloads pinned ones)')
            if plat.cuda and ort.cuda_major and plat.cuda.major != ort.cuda_major:
                error(f'{ort.origin} was built for CUDA {ort.cuda_major}, '
                      f'but the toolkit is CUDA {plat.cuda.version}',
                      'use an onnxruntime-gpu built for your JetPack, '
                      'or --cuda-home the matching toolkit')
            if ort.gpu_codes and plat.compute_capability and \
                    runs_on(ort.gpu_codes, plat.compute_capability) is None:
                # e.g. PyPI's aarch64 onnxruntime-gpu on an Orin: sm_89 and newer only, no PTX
                error(f'{ort.origin}: its CUDA provider has no GPU code for this GPU '
                      f'(sm_{plat.compute_capability}); it has only '
                      f'{", ".join(map(str, ort.gpu_codes))}, so every CUDA kernel would fail '
                      "with 'no kernel image is available for execution on the device'",
                      'install an onnxruntime-gpu built for this GPU: '
                      + ort_hint(plat, choice.ort))
            if ort.cudnn_major and plat.cudnn_majors and ort.cudnn_major not in plat.cudnn_majors:
                error(f'{ort.origin} needs cuDNN {ort.cudnn_major}, '
                      f'but this JetPack has cuDNN {", ".join(map(str, plat.cudnn_majors))}',
                      'install the onnxruntime-gpu built for your JetPack '
                      '(JetPack 6.1/6.2: cuDNN 9)')
        if not ort_headers_available:
            error(f'no pinned ONNX Runtime 1.{need_api} source archive to take headers from, '
                  'and the ONNX Runtime source has none',
                  'pass --ort-headers DIR: the include folder of an ONNX Runtime '
                  f'{choice.ort} release or source tree (include/onnxruntime/core/session)')
        if docker_requested and not plat.docker:
            error('--ort-image was given but docker is not installed',
                  'install docker, or use --ort-source DIR')

    # --- ONNX Runtime at run time: onnxruntime-genai loads it from the onnxruntime package -------
    rt = plat.ort_runtime
    if cross:
        pass
    elif rt is None:
        (error if install else warn)(
            'the ROS Python has no onnxruntime package '
            f'({plat.ort_runtime_error or "not importable"}); '
            'onnxruntime-genai loads ONNX Runtime from it at run time',
            ort_hint(plat, choice.ort))
    else:
        if not rt.has_cuda:
            (error if install else warn)(
                f'onnxruntime {rt.version} in the ROS Python has no CUDAExecutionProvider '
                f'(providers: {", ".join(rt.providers)}): '
                'a CPU onnxruntime package shadows the GPU one',
                f'{py_cmd} -m pip uninstall -y onnxruntime onnxruntime-gpu, then '
                + ort_hint(plat, choice.ort))
        if ort_api_version(rt.version) < need_api:
            (error if install else warn)(
                f'onnxruntime {rt.version} in the ROS Python is older than the ONNX Runtime '
                f'{choice.genai.min_ort} onnxruntime-genai {choice.genai.version} '
                'needs at run time',
                ort_hint(plat, choice.ort))
    return problems


def check_local_sources(source: Optional[Path], deps_dir: Optional[Path],
                        version: str) -> List[Problem]:
    """
    Check that the --source tree is the release and --deps-dir has each dependency.

    For a release the builder pins the dependencies of, the folders are listed (with the command
    that brings each) even before the source tree is there, and each folder's content is
    compared with the release's.
    """
    problems: List[Problem] = []
    if source is None:
        return problems
    pinned = local_sources.release_dependencies(version)
    try:
        local_sources.check_source(source, version)
        source_there = True
    except local_sources.LocalSourceError as exc:
        problems.append(Problem('error', str(exc), 'fix --source or --genai-version'))
        source_there = False
        if pinned is None:
            return problems
    if source_there:
        differences = local_sources.release_differences(source, version)
        if differences:
            problems.append(Problem(
                'error', f'{source} says it is onnxruntime-genai {version}, but its '
                         f"cmake/deps.txt is not that release's: " + '; '.join(differences),
                f'give --source an unchanged checkout or extracted archive of the v{version} '
                'tag'))
    if deps_dir is None:
        return problems
    deps = local_sources.required_dependencies(source, deps_dir, version) if source_there \
        else pinned.every
    missing = local_sources.missing_dependencies(deps, deps_dir)
    if missing:
        notes = []
        if not source_there:
            notes.append(f"the list is onnxruntime-genai {version}'s, pinned in the builder")
        archive = next((dep for dep in missing if not dep.is_git), None)
        if archive is not None:
            notes.append('an archive holds one top folder, whose contents go directly in the '
                         "dependency's folder (as the commands below do): "
                         f'{local_sources.top_file(archive, deps_dir)} must exist, not one '
                         'level deeper')
        if local_sources.nested_unknown(deps):
            notes.append('the dependencies of onnxruntime-extensions are listed once '
                         f'{deps_dir / local_sources.EXTENSIONS} is there: run the check again '
                         'then')
        problems.append(Problem(
            'error', f'{len(missing)} of the {len(deps)} dependencies an offline build '
                     f'needs are not in {deps_dir}',
            'put each there (the URL is what CMake would download)'
            + ''.join(f'; {note}' for note in notes) + ':\n         '
            + '\n         '.join(local_sources.describe_missing(missing, deps_dir))))
    for mismatch in local_sources.mismatched_dependencies(deps, deps_dir):
        problems.append(Problem('error', *local_sources.describe_mismatch(mismatch, deps_dir)))
    unchecked = [dep.folder for dep in deps if not dep.fingerprint and dep not in missing]
    if unchecked:
        problems.append(Problem(
            'warning', f'only the existence of {", ".join(unchecked)} in {deps_dir} was checked, '
                       f'not their version: the builder pins the content of the dependencies of '
                       f'onnxruntime-genai {", ".join(local_sources.RELEASE_DEPENDENCIES)} only',
            'nothing to do if each holds what its URL names (the plan lists them)'))
    return problems


def _short(version: Optional[str]) -> str:
    parts = (version or '3').split('.')
    return '.'.join(parts[:2]) if len(parts) >= 2 else '3'


def has_errors(problems: List[Problem]) -> bool:
    return any(p.level == 'error' for p in problems)


def _check_jetpack_60(plat: Platform, choice: VersionChoice, ort: Optional[OrtSource],
                      error, warn) -> None:
    """
    Say plainly that no ONNX Runtime fits JetPack 6.0 (CUDA 12.2, cuDNN 8), unless one is given.

    Every onnxruntime-genai the builder builds (0.5 and later) needs ONNX Runtime 1.20 or newer;
    the onnxruntime-gpu builds for JetPack 6 on the jetson-ai-lab index are for CUDA 12.6 and
    cuDNN 9 (JetPack 6.1/6.2), and jetson-containers' ONNX Runtime builds for CUDA 12.2 stop at
    1.17. So the builder cannot make a working wheel for 6.0 by itself.
    """
    usable = (ort is not None and ort.has_cuda_provider and ort.version
              and ort_api_version(ort.version) >= ort_api_version(choice.genai.min_ort)
              and (not ort.cudnn_major or ort.cudnn_major in (plat.cudnn_majors or [8])))
    where = f'JetPack {plat.jetpack.jetpack} (CUDA 12.2, cuDNN 8)'
    if usable:
        warn(f'{where}: building against {ort.origin}, an ONNX Runtime {ort.version} for this '
             'JetPack that you provide; this combination was not tested by phi3v_ros',
             'nothing to do if that build is yours; JetPack 6.1/6.2 is the tested route')
        return
    error(f'{where} has no onnxruntime-gpu {choice.genai.min_ort} or newer to build against: '
          f'onnxruntime-genai {choice.genai.version} needs it (every release from 0.5 needs 1.20 '
          'or newer), the JetPack 6 builds on the jetson-ai-lab index are for CUDA 12.6 and '
          "cuDNN 9, and jetson-containers' ONNX Runtime builds for CUDA 12.2 stop at 1.17",
          'upgrade the Jetson to JetPack 6.1 or 6.2 (L4T R36.4; CUDA 12.6, cuDNN 9), then rerun; '
          f'or build onnxruntime-gpu {choice.genai.min_ort}+ yourself for CUDA 12.2 and cuDNN 8 '
          'and pass its folder with --ort-source')
