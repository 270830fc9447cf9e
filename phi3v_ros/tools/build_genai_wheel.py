"""
Build (or fetch) an aarch64 CUDA wheel of onnxruntime-genai on a Jetson, install it, check it.

Usage::

    # print every step and command, run nothing
    ros2 run phi3v_ros build_genai_wheel --dry-run
    # build, install into the ROS Python, check
    ros2 run phi3v_ros build_genai_wheel --install
    # the same before the package is built
    python3 -m phi3v_ros.tools.build_genai_wheel --dry-run

On a machine that is not a Jetson, ``--dry-run`` shows the plan for ``--target`` (default: JetPack
6 on Orin), and ``--non-jetson`` builds for that machine's own GPU (an x86_64 desktop whose CUDA
no published wheel matches, an aarch64 server). ``--source DIR`` builds a local onnxruntime-genai
tree instead of cloning it, and ``--deps-dir DIR`` gives every third-party source CMake would
download as a local folder: an offline build. See docs/jetson.md for the walkthrough and the
table of known failures.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
import re
import shlex
import sys
from typing import Callable, Optional, Sequence

from phi3v_ros.tools.genai_wheel import checks as checks_mod
from phi3v_ros.tools.genai_wheel import cross as cross_mod
from phi3v_ros.tools.genai_wheel import cuda_libs
from phi3v_ros.tools.genai_wheel import platform as platform_mod
from phi3v_ros.tools.genai_wheel.ort_libs import (from_folder, from_python_package, OrtError,
                                                  OrtSource, source_summary_for_preset)
from phi3v_ros.tools.genai_wheel.plan import header_archive, make_plan, Options, render_plan
from phi3v_ros.tools.genai_wheel.runner import Context, execute
from phi3v_ros.tools.genai_wheel.versions import (choose_versions, DEFAULT_GENAI, DEFAULT_ORT,
                                                  table_rows, VersionError)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
OFFLINE_HEADERS_FIX = (
    'give --ort-headers the include/onnxruntime/core/session folder of an ONNX Runtime 1.{api} '
    "or newer source tree, or Debian sid's libonnxruntime-dev without installing it: "
    'docs/jetson.md 4c step 4 (apt-get download libonnxruntime-dev; dpkg -x it DIR; '
    '--ort-headers DIR/usr/include/onnxruntime)')


def default_work_root() -> Path:
    env = os.environ.get('PHI3V_ROS_BUILD_DIR')
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'phi3v_ros' / 'genai-build'


def compute_capability(text: str) -> str:
    """``--cuda-arch``: one GPU, as 87, 8.7 or sm_87 (the wheel is built for one architecture)."""
    value = text.strip().lower().replace('sm_', '').replace('.', '')
    if not re.fullmatch(r'[1-9]\d{1,2}', value):
        raise argparse.ArgumentTypeError(f'{text!r} is not one compute capability such as 87, '
                                         '8.7 or sm_87')
    return value


def sha256_hex(text: str) -> str:
    """``--prebuilt-sha256``: 64 hexadecimal digits."""
    if not re.fullmatch(r'[0-9a-fA-F]{64}', text.strip()):
        raise argparse.ArgumentTypeError(f'{text!r} is not a sha256 (64 hexadecimal digits)')
    return text.strip().lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='build_genai_wheel',
        description='Build an aarch64 CUDA wheel of onnxruntime-genai on a Jetson (PyPI has '
                    'none), install it into the Python ROS uses, and check that a generation runs '
                    'on CUDA. Rerunning resumes.')
    parser.add_argument('--dry-run', action='store_true',
                        help='print what was found, the checks and every step with its exact '
                             'command; run nothing')
    parser.add_argument('--target', choices=sorted(platform_mod.PRESETS), default=None,
                        help='with --dry-run on a machine that is not a Jetson: the Jetson to '
                             f'plan for (default {platform_mod.DEFAULT_PRESET}: '
                             f'{platform_mod.PRESETS[platform_mod.DEFAULT_PRESET]})')
    parser.add_argument('--install', action='store_true',
                        help='install the wheel into the ROS Python and check it (import, CUDA, '
                             'a generation)')
    parser.add_argument('--genai-version',
                        help=f'onnxruntime-genai release (default {DEFAULT_GENAI}, or the newest '
                             'that works with the ONNX Runtime found)')
    parser.add_argument('--ort-version',
                        help='ONNX Runtime version to build against (default: the one found, '
                             f'else {DEFAULT_ORT})')
    parser.add_argument('--genai-commit',
                        help='commit of the release tag, for a release not in the table')
    parser.add_argument('--ort-source', default='auto',
                        help="where the ONNX Runtime GPU libraries come from: 'auto' (default), "
                             "'python' (the onnxruntime-gpu package of the ROS Python), or a "
                             'folder (extracted release, install prefix or build folder)')
    parser.add_argument('--ort-image',
                        help='a container image with ONNX Runtime under /usr/local (copied out '
                             'with docker create + docker cp; needs docker)')
    parser.add_argument('--ort-headers',
                        help='folder with the ONNX Runtime C API headers (default: from the '
                             'source, else the pinned ONNX Runtime source archive)')
    parser.add_argument('--prebuilt-index', metavar='URL',
                        help='a PEP 503 simple index to look for a prebuilt CUDA wheel on '
                             '(default on a Jetson: the jetson-ai-lab index of its JetPack and '
                             'CUDA, e.g. https://pypi.jetson-ai-lab.io/jp6/cu126/+simple/)')
    parser.add_argument('--prebuilt-sha256', metavar='HEX', type=sha256_hex,
                        help="the sha256 the prebuilt wheel must have (default: the index's)")
    parser.add_argument('--build-from-source', action='store_true',
                        help='never use a prebuilt wheel')
    parser.add_argument('--non-jetson', action='store_true',
                        help="build for this machine's own NVIDIA GPU (x86_64 desktop, aarch64 "
                             'server): no JetPack checks; give --cuda-arch when nvidia-smi '
                             'cannot tell')
    parser.add_argument('--cross', action='store_true',
                        help='build the wheel of --target (default jp6-orin: aarch64, sm_87, '
                             'CUDA 12, Python 3.10) on this x86_64 machine: needs '
                             '--cuda-home (a CUDA 12 toolkit with targets/aarch64-linux), '
                             '--target-python-include, --ort-source (aarch64) and a --python '
                             "of the target's minor; docs/jetson.md 4d")
    parser.add_argument('--cross-prefix', default='aarch64-linux-gnu-',
                        help='with --cross: the prefix of the aarch64 GCC (default '
                             'aarch64-linux-gnu-)')
    parser.add_argument('--target-python-include', metavar='DIR',
                        help="with --cross: the target Python's headers (Python.h and an "
                             "aarch64 pyconfig.h), e.g. the Jetson's /usr/include/python3.10")
    parser.add_argument('--emulator-python', metavar='COMMAND',
                        help='with --cross: a command that runs the target Python here, e.g. '
                             '"qemu-aarch64 -L /usr/aarch64-linux-gnu /opt/py310-arm/bin/'
                             'python3.10", with onnxruntime, numpy, onnx, tokenizers and OpenCV '
                             'installed: the checks that need no GPU then run on Arm (provider '
                             'cpu)')
    parser.add_argument('--source', metavar='DIR',
                        help='an onnxruntime-genai source tree (checkout or extracted archive '
                             'of the release) to build instead of cloning it')
    parser.add_argument('--deps-dir', metavar='DIR',
                        help='offline build: one folder per third-party source its CMake would '
                             'download (--dry-run lists them); needs --source and, without the '
                             'network, --ort-headers')
    parser.add_argument('--guidance', choices=('auto', 'on', 'off'), default='auto',
                        help="build constrained answers (llguidance, needs Rust's cargo) in: "
                             'auto (where cargo is there and the build is online; the default), '
                             'on (a missing cargo is an error) or off')
    parser.add_argument('--cuda-libs', choices=('toolkit', 'python'), default='toolkit',
                        help='where cuBLAS, cuRAND and cuFFT come from: the CUDA toolkit '
                             "(default) or the Python's nvidia-* pip packages (for a toolkit "
                             'that has only nvcc)')
    parser.add_argument('--python',
                        help='the interpreter ROS 2 uses (default: found from '
                             '/opt/ros/*/bin/ros2)')
    parser.add_argument('--cuda-home',
                        help='the CUDA toolkit to build with, when several are installed')
    parser.add_argument('--cuda-arch', type=compute_capability,
                        help='GPU compute capability, e.g. 87 (Orin), 72 (Xavier), 110 (Thor), '
                             '90 (H100/H200)')
    parser.add_argument('--jobs', type=int, help='compile jobs (default: bounded by free memory)')
    parser.add_argument('--work-dir', help=f'where to build (default {default_work_root()})')
    parser.add_argument('--install-cmake', action='store_true',
                        help='install a new enough CMake with pip for your user when the system '
                             'one is too old')
    parser.add_argument('--pip-args', default='', help='extra arguments for pip install, e.g. '
                                                       '"--break-system-packages"')
    parser.add_argument('--restart', action='store_true',
                        help='forget completed steps and run them all again')
    parser.add_argument('--ignore-checks', action='store_true',
                        help='run even when a prerequisite check fails')
    parser.add_argument('--list-versions', action='store_true',
                        help='print the version table and exit')
    return parser


def print_versions(out: Callable[[str], None]) -> None:
    out('onnxruntime-genai  needs ONNX Runtime  C API  CMake  Phi-3-vision export it reads')
    for genai, ort, api, cmake, export in table_rows():
        mark = '  (default)' if genai == DEFAULT_GENAI else ''
        out(f'{genai:<18} >= {ort:<15} {api:<6} {cmake:<6} {export}{mark}')


def find_ort_source(args, plat, probe, out) -> Optional[OrtSource]:
    """Find the ONNX Runtime GPU libraries to build against (None: none found, or image used)."""
    if args.ort_image:
        return None
    spec = args.ort_source
    if spec not in ('auto', 'python'):
        return from_folder(Path(spec).expanduser())
    if plat.synthetic:
        rt = plat.ort_runtime
        cuda_major = plat.cuda.major if plat.cuda else 12
        return source_summary_for_preset(rt.capi_dir, rt.version, cuda_major)
    if plat.ort_runtime is not None:
        try:
            return from_python_package(probe.path(plat.ort_runtime.capi_dir),
                                       f'onnxruntime {plat.ort_runtime.version} in '
                                       f'{plat.python.path}')
        except OrtError as exc:
            if spec == 'python':
                raise
            out(f'note: {exc}')
    return None


def cross_target(args, host: platform_mod.Platform, out: Callable[[str], None]):
    """Return (the platform to build for, CrossBuild): the target's facts, this machine's tools."""
    target = args.target or platform_mod.DEFAULT_PRESET
    plat = platform_mod.preset_platform(target, ort_version=args.ort_version or DEFAULT_ORT)
    out(f'Cross build (--cross) for --target {target}: {platform_mod.PRESETS[target]}')
    cuda_home = Path(args.cuda_home).expanduser().resolve() if args.cuda_home else None
    version = cross_mod.nvcc_version(cuda_home) if cuda_home else None
    cuda = platform_mod.CudaInstall(str(cuda_home), version) if version else None
    status, gcc = cross_mod.run_text([f'{args.cross_prefix}gcc', '-dumpfullversion'])
    cross = cross_mod.CrossBuild(
        prefix=args.cross_prefix,
        python_include=Path(args.target_python_include or '.').expanduser().resolve(),
        python_version='.'.join(plat.python.version.split('.')[:2]),
        emulator=shlex.split(args.emulator_python or ''),
        rust_target_installed=args.guidance != 'off' and cross_mod.rust_target_installed(),
        cuda_home=cuda_home, cuda_version=version)
    plat = dataclasses.replace(
        plat, is_jetson=False, synthetic=False, python=host.python, cmake=host.cmake,
        cmake_path=host.cmake_path, git=host.git, cargo=host.cargo, docker=host.docker,
        mem_total=host.mem_total, mem_available=host.mem_available, swap_free=host.swap_free,
        cpu_count=host.cpu_count, disk_free=host.disk_free,
        gcc=gcc.strip() if status == 0 else None, cuda=cuda, cuda_installs=[cuda] if cuda else [],
        cuda_reason='--cuda-home', compute_capability=args.cuda_arch or plat.compute_capability,
        cuda_missing=cuda_libs.toolkit_missing(cuda_home) if cuda else [], ort_runtime=None)
    out(f'  compilers {args.cross_prefix}gcc {plat.gcc}, CUDA {version} at {cuda_home}, '
        f'sm_{plat.compute_capability}, Python {cross.python_version} headers '
        f'{cross.python_include}')
    return plat, cross


def main(argv: Optional[Sequence[str]] = None, probe: Optional[platform_mod.Probe] = None,
         out: Callable[[str], None] = print, context: Optional[Context] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_versions:
        print_versions(out)
        return 0
    probe = probe or platform_mod.Probe()
    work_root = Path(args.work_dir).expanduser() if args.work_dir else default_work_root()
    plat = platform_mod.detect(probe, str(work_root), python=args.python, cuda_home=args.cuda_home,
                               cuda_arch=args.cuda_arch)
    out('Found on this machine:')
    for line in plat.summary():
        out(f'  {line}')

    cross = None
    if args.cross:
        if args.non_jetson or args.install or args.cuda_libs == 'python':
            out('error: --cross builds for a Jetson here; it does not combine with '
                '--non-jetson, --install (install on the Jetson, or check on Arm with '
                '--emulator-python) or --cuda-libs python (the toolkit of --cuda-home has them)')
            return 2
        host_machine = plat.machine
        plat, cross = cross_target(args, plat, out)
    if args.deps_dir and not args.source:
        out('error: --deps-dir (an offline build) needs --source too: the dependency list is '
            "read from the source's cmake/deps.txt")
        return 2
    is_target = (plat.is_jetson and plat.machine in ('aarch64', 'arm64')) or args.non_jetson \
        or args.cross
    if args.dry_run and not args.cross and (not is_target or args.target):
        target = args.target or platform_mod.DEFAULT_PRESET
        if not is_target:
            out(f'This machine is not a Jetson ({plat.machine}, no /etc/nv_tegra_release): '
                f'nothing here is changed, and the plan below is for --target {target}:')
        out(f'  {platform_mod.PRESETS[target]}')
        plat = platform_mod.preset_platform(target, ort_version=args.ort_version or DEFAULT_ORT)
        out('Assumed on the target:')
        for line in plat.summary():
            out(f'  {line}')
    elif not is_target and not args.dry_run:
        targets = '|'.join(sorted(platform_mod.PRESETS))
        out(f'error: this machine is {plat.machine} and not a Jetson: run the builder on the '
            f'Jetson; to review the plan here, use --dry-run (optionally --target {targets}); '
            "to build for this machine's own GPU, --non-jetson")
        return 2

    # A source that is not there yet is one of the checks' errors, not the end of the run: the
    # dry run still lists everything else the build needs.
    ort_problem = None
    try:
        ort = find_ort_source(args, plat, probe, out)
    except OrtError as exc:
        ort, ort_problem = None, checks_mod.Problem(
            'error', f'--ort-source {args.ort_source}: {exc}',
            'give --ort-source the folder of the ONNX Runtime libraries (docs/jetson.md 4c/4d)')
        out(f'ONNX Runtime source: {exc}')
    if ort is not None:
        out(f'ONNX Runtime source: {ort.describe()}')
    elif args.ort_image:
        out(f'ONNX Runtime source: image {args.ort_image} (copied out during the build)')
    try:
        choice = choose_versions(ort.version if ort else None, args.genai_version,
                                 args.ort_version, args.genai_commit)
    except VersionError as exc:
        out(f'error: {exc}')
        return 2
    out(f'Versions: onnxruntime-genai {choice.genai.version} + ONNX Runtime {choice.ort} '
        f'({choice.reason})')

    headers_available = bool(args.ort_headers or (ort is not None and ort.header_dir)
                             or args.ort_image or header_archive(choice, ort) is not None)
    problems = checks_mod.check_prerequisites(
        plat, choice, ort if not args.ort_image else OrtSource('docker', args.ort_image, libs=[
            'libonnxruntime_providers_cuda.so']),
        install=args.install, install_cmake=args.install_cmake,
        ort_headers_available=headers_available, docker_requested=bool(args.ort_image),
        non_jetson=(args.non_jetson or args.cross) and not plat.synthetic,
        cuda_libs=args.cuda_libs, offline=bool(args.deps_dir), guidance=args.guidance,
        cross=bool(cross))
    if ort_problem is not None or cross:
        # said better by the error about --ort-source (a cross build's is check_cross's)
        problems = ([ort_problem] if ort_problem else []) + [
            p for p in problems if not p.what.startswith('no ONNX Runtime GPU libraries')]
    if cross:
        problems += [checks_mod.Problem('error', what, fix) for what, fix in cross_mod.check_cross(
            cross, plat.python.version if plat.python else None, ort.lib_dir if ort else None,
            choice.genai.min_gcc, host_machine)]
        if args.guidance == 'on' and not cross.rust_target_installed:
            problems.append(checks_mod.Problem(
                'error', f"--guidance on: Rust's standard library for {cross_mod.RUST_TARGET} is "
                'not installed', f'rustup target add {cross_mod.RUST_TARGET}, or --guidance auto'))
    if args.deps_dir and not (args.ort_headers or (ort is not None and ort.header_dir)
                              or args.ort_image):
        # the pinned source archive the headers come from otherwise is a download
        problems.append(checks_mod.Problem(
            'error', 'an offline build (--deps-dir) has no ONNX Runtime C API headers: the '
            'builder would download them', OFFLINE_HEADERS_FIX.format(api=choice.genai.ort_api)))
    problems += checks_mod.check_local_sources(
        Path(args.source).expanduser() if args.source else None,
        Path(args.deps_dir).expanduser() if args.deps_dir else None, choice.genai.version)
    if problems:
        out('Checks:')
        for problem in problems:
            out(f'  {problem}')
    else:
        out('Checks: all prerequisites are there.')

    opts = Options(work_root=work_root, install=args.install,
                   build_from_source=args.build_from_source,
                   prebuilt_index=args.prebuilt_index, prebuilt_sha256=args.prebuilt_sha256,
                   jobs=args.jobs, install_cmake=args.install_cmake,
                   ort_headers=Path(args.ort_headers).expanduser() if args.ort_headers else None,
                   ort_image=args.ort_image, pip_args=shlex.split(args.pip_args),
                   package_root=PACKAGE_ROOT,
                   source=Path(args.source).expanduser() if args.source else None,
                   deps_dir=Path(args.deps_dir).expanduser() if args.deps_dir else None,
                   cuda_libs=args.cuda_libs, guidance=args.guidance, cross=cross)
    plan = make_plan(plat, choice, ort, opts)
    errors = checks_mod.has_errors(problems)
    if args.dry_run:
        out('')
        for line in render_plan(plan):
            out(line)
        if errors:
            out('')
            out('The checks above found errors: a real run stops until they are fixed.')
        out('(dry run: nothing was run)')
        return 0
    if errors and not args.ignore_checks:
        out('Fix the errors above, then run the same command again '
            '(or --dry-run to see the plan).')
        return 1
    context = context or Context(out=out)
    context.restart = context.restart or args.restart
    status = execute(plan, context)
    if status == 0:
        out('')
        out('Done.')
        for line in plan.after:
            out(line)
    return status


if __name__ == '__main__':
    sys.exit(main())
