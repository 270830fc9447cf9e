"""
The planner: a pure function from (platform, versions, ONNX Runtime source, options) to steps.

``--dry-run`` prints the steps; a real run executes the same steps (``runner``). Every step is
either an exact command (``argv``, with its working folder, environment and log file) or a named
internal action whose ``detail`` lines say exactly what it does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
from pathlib import Path
import shlex
from typing import Any, Dict, List, Optional

from . import cross as cross_mod
from . import local_sources
from .checks import CMAKE_PIP_SPEC
from .ort_libs import docker_commands, gather_plan, OrtSource
from .platform import GIB, Platform
from .prebuilt import jetson_ai_lab_index
from .versions import (GENAI_REPO_URL, GUIDANCE_SINCE, ort_api_version, ort_archive_for,
                       ORT_ARCHIVE_URL, ORT_SOURCE_ARCHIVES, parse_version, version_at_least,
                       VersionChoice)

# memory one compile job may take, and what to leave free. Measured (bench/build_wheel.py,
# docs/jetson.md 4c): the largest compiler process of a 0.11.4 CUDA build took 0.95 GiB, two jobs
# together 1.4 GiB at their peak; 1.5 GiB a job keeps half a job's margin (an 8 GB Orin Nano
# gets 3 jobs, not 1)
MEM_PER_JOB_GIB = 1.5
MEM_RESERVE_GIB = 1.5

IMPORT_CHECK = ('import onnxruntime_genai as og; '
                'print("onnxruntime_genai", og.__version__, "from", og.__file__)')
CUDA_CHECK = ('import sys, onnxruntime_genai as og; ok = og.is_cuda_available(); '
              'print("is_cuda_available:", ok); sys.exit(0 if ok else 1)')
# (argv[2], the provider: cuda, or cpu for the checks of a cross-built wheel under an emulator)
GUIDANCE_CHECK = (
    'import sys; from phi3v_ros.engine.engine import Engine, EngineConfig; '
    'from phi3v_ros.engine.generation import Request, GenerationSettings; '
    'e = Engine(EngineConfig(model_path=sys.argv[1], provider=sys.argv[2])); '
    'r = e.generate(Request(prompt="Is it?", settings=GenerationSettings(max_new_tokens=8), '
    'answer_format=("choices", ("yes", "no")))); '
    'print("constrained answer:", repr(r.text), r.constrained_by or r.error); '
    'sys.exit(0 if r.ok and r.constrained_by == "guidance" else 1)')
GENERATE_CHECK = (
    'import sys; from phi3v_ros.engine.engine import Engine, EngineConfig; '
    'from phi3v_ros.engine.generation import Request, GenerationSettings; '
    'e = Engine(EngineConfig(model_path=sys.argv[1], provider=sys.argv[2])); '
    'r = e.generate(Request(prompt="hi", settings=GenerationSettings(max_new_tokens=4))); '
    'print("generation with provider", e.provider, r); assert r.ok')


@dataclass
class Options:
    work_root: Path
    install: bool = False
    build_from_source: bool = False
    prebuilt_index: Optional[str] = None
    prebuilt_sha256: Optional[str] = None
    jobs: Optional[int] = None
    install_cmake: bool = False
    ort_headers: Optional[Path] = None
    ort_image: Optional[str] = None
    pip_args: List[str] = field(default_factory=list)
    package_root: Optional[Path] = None     # folder holding the phi3v_ros package (for the checks)
    home: Optional[Path] = None
    source: Optional[Path] = None           # a local onnxruntime-genai tree instead of a clone
    deps_dir: Optional[Path] = None         # local folders for every FetchContent dependency
    cuda_libs: str = 'toolkit'              # 'toolkit', or 'python': cuBLAS & co from pip wheels
    guidance: str = 'auto'                  # build constrained answers in: auto, on or off
    cross: Optional[cross_mod.CrossBuild] = None   # --cross: built here for a Jetson


@dataclass
class Step:
    id: str  # noqa: A003 - the step's public key (state file, --dry-run, runner and tests)
    title: str
    phase: str                              # prebuilt, tools, source, ort, build, install, verify
    argv: Optional[List[str]] = None
    cwd: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    log: Optional[str] = None
    action: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    detail: List[str] = field(default_factory=list)
    always: bool = False        # run again even when a previous run completed it (checks)
    progress: bool = False      # show the build's percentage
    allow_fail: bool = False
    fallback: bool = False      # failing switches from the prebuilt wheel to building from source


@dataclass
class Plan:
    steps: List[Step]
    work_dir: Path
    key: str
    jobs: int
    jobs_reason: str
    notes: List[str] = field(default_factory=list)
    after: List[str] = field(default_factory=list)      # what to do next, printed at the end
    # where the wheel is expected (shown in --dry-run)
    wheel: Optional[str] = None


def parallel_jobs(mem_available: Optional[int], cpu_count: int,
                  requested: Optional[int] = None) -> (int, str):
    """
    Choose the number of compile jobs, bounded by free memory.

    Unbounded --parallel runs Orin Nano/NX out of memory.
    """
    if requested:
        return max(1, requested), '--jobs'
    if mem_available is None:
        return 1, 'free memory unknown'
    by_memory = int((mem_available / GIB - MEM_RESERVE_GIB) // MEM_PER_JOB_GIB)
    jobs = max(1, min(cpu_count, by_memory))
    return jobs, (f'{mem_available / GIB:.1f} GiB available / {MEM_PER_JOB_GIB} GiB a job, '
                  f'{cpu_count} CPUs')


def work_dir_for(root: Path, plat: Platform, choice: VersionChoice) -> Path:
    cuda = '.'.join(plat.cuda.version.split('.')[:2]) if plat.cuda else 'none'
    py = '.'.join((plat.python.version or 'x').split('.')[:2]) if plat.python else 'x'
    sm = plat.compute_capability or 'x'
    return Path(root) / f'genai-{choice.genai.version}-ort-{choice.ort}-sm{sm}-cuda{cuda}-py{py}'


def plan_key(plat: Platform, choice: VersionChoice, ort: Optional[OrtSource]) -> str:
    parts = [choice.genai.version, choice.genai.commit or '', choice.ort,
             plat.compute_capability or '', plat.cuda.path if plat.cuda else '',
             plat.python.path if plat.python else '', ort.origin if ort else '']
    return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:16]


def python_tag(plat: Platform) -> str:
    """Return the wheel tag of the build's Python ('cp310'; Humble's when it is not known)."""
    version = (plat.python.version if plat.python else None) or '3.10'
    return 'cp' + ''.join(version.split('.')[:2])


def wheel_name(choice: VersionChoice, plat: Platform) -> str:
    """Return the file name build.py gives the wheel (package onnxruntime-genai-cuda)."""
    py = python_tag(plat)
    return f'onnxruntime_genai_cuda-{choice.genai.version}-{py}-{py}-linux_{plat.machine}.whl'


def _pip_install_flags(plat: Platform, opts: Options) -> List[str]:
    flags = ['--no-deps', '--force-reinstall']
    py = plat.python
    if py and not py.in_venv and not py.is_root:
        flags.append('--user')
    return flags + list(opts.pip_args)


def prebuilt_for(plat: Platform, opts: Options) -> Dict[str, Optional[str]]:
    """Return the index to look on for a prebuilt wheel (None: build only), and why."""
    if opts.cross:
        return {'index': None, 'why': 'a cross build (--cross)'}
    if opts.build_from_source:
        return {'index': None, 'why': '--build-from-source'}
    if opts.prebuilt_index:
        index = opts.prebuilt_index.rstrip('/') + '/'
        return {'index': index, 'why': '--prebuilt-index'}
    if opts.deps_dir:
        return {'index': None, 'why': 'offline build (--deps-dir)'}
    if not (plat.is_jetson or plat.synthetic):
        return {'index': None, 'why': 'not a Jetson: no index of Jetson builds applies'}
    cuda = '.'.join(plat.cuda.version.split('.')[:2]) if plat.cuda else None
    index = jetson_ai_lab_index(plat.jetpack_major, cuda)
    if index is None:
        return {'index': None, 'why': 'JetPack or CUDA unknown'}
    return {'index': index, 'why': f'the jetson-ai-lab index of JetPack {plat.jetpack_major}, '
                                   f'CUDA {cuda}'}


def header_archive(choice: VersionChoice, ort: Optional[OrtSource]) -> Optional[str]:
    """
    Return the pinned source archive to take headers from.

    The C API only changes with the minor version, so any patch release of a minor will do.
    Preference: the library's own version if pinned; else the genai release's own minor (what it
    was built and tested with); else the next minors up to the library's.
    """
    need = ort_api_version(choice.genai.min_ort)
    lib_version = (ort.version if ort and ort.version else None) or choice.ort
    top = ort_api_version(lib_version)
    if lib_version in ORT_SOURCE_ARCHIVES and need <= top:
        return lib_version
    for api in range(need, top + 1):
        version = ort_archive_for(api)
        if version:
            return version
    return None


def use_guidance(plat: Platform, choice: VersionChoice, opts: Options):
    """Return (build with guidance?, why) for --guidance auto/on/off (on: checks refuse misses)."""
    if opts.guidance == 'off':
        return False, '--guidance off'
    if parse_version(choice.genai.version) < GUIDANCE_SINCE:
        return False, f'onnxruntime-genai {choice.genai.version} has none (it came in 0.8)'
    if not plat.cargo:
        return (opts.guidance == 'on', 'no Rust (cargo) here' if opts.guidance == 'auto' else
                '--guidance on')
    if opts.deps_dir:
        return (opts.guidance == 'on', 'its Rust crates are downloaded by cargo, and --deps-dir '
                'builds offline' if opts.guidance == 'auto' else '--guidance on')
    if opts.cross and not opts.cross.rust_target_installed:
        return (opts.guidance == 'on', f"Rust's standard library for {cross_mod.RUST_TARGET} is "
                f'not installed (rustup target add {cross_mod.RUST_TARGET})'
                if opts.guidance == 'auto' else '--guidance on')
    return True, f'--guidance {opts.guidance}, cargo {plat.cargo}' + (
        f', for {cross_mod.RUST_TARGET}' if opts.cross else '')


def make_plan(plat: Platform, choice: VersionChoice, ort: Optional[OrtSource],
              opts: Options) -> Plan:
    py = plat.python.path if plat.python else 'python3'
    work = work_dir_for(opts.work_root, plat, choice)
    if opts.cross:
        work = work.with_name(work.name + '-cross')
    logs = work / 'logs'
    jobs, jobs_reason = parallel_jobs(plat.mem_available, plat.cpu_count, opts.jobs)
    steps: List[Step] = []
    notes: List[str] = []
    after: List[str] = []
    release = choice.genai
    home = Path(opts.home) if opts.home else Path.home()
    arch = plat.compute_capability or '87'      # checks.py has said so when it was not found

    steps.append(Step('workdir', f'Create the work folder {work}', 'tools',
                      argv=['mkdir', '-p', str(logs)]))

    # --- 1. a prebuilt wheel, looked up on the index for this JetPack and CUDA ------------------
    prebuilt = prebuilt_for(plat, opts)
    if prebuilt['index']:
        py_tag = python_tag(plat)
        sha = f', sha256 {opts.prebuilt_sha256.lower()}' if opts.prebuilt_sha256 else \
            ', the sha256 the index gives'
        steps.append(Step(
            'prebuilt', f'Look for a prebuilt wheel on {prebuilt["index"]}', 'prebuilt',
            action='prebuilt',
            params={'index': prebuilt['index'], 'python_tag': py_tag, 'machine': plat.machine,
                    'wanted': release.version,
                    'runtime_ort': plat.ort_runtime.version if plat.ort_runtime else None,
                    'sha256': opts.prebuilt_sha256.lower() if opts.prebuilt_sha256 else None,
                    'compute_capability': arch,
                    'dir': str(work / 'prebuilt'), 'dest': str(work / 'dist')},
            detail=[f'{prebuilt["index"]}onnxruntime-genai-cuda/ and .../onnxruntime-genai/: '
                    f'a {py_tag} {plat.machine} wheel of {release.version} (else the newest '
                    'supported release)',
                    f'download it into {work / "prebuilt"}/ and verify it{sha}',
                    'its shared libraries must hold GPU code for '
                    f'sm_{arch} (their fatbin headers), '
                    f'then copy it to {work / "dist"}/'],
            fallback=True))
        notes.append(f'a prebuilt wheel is looked for first ({prebuilt["why"]}); if there is '
                     'none, or it does not fit, the build steps run instead')
    else:
        notes.append(f'prebuilt wheel: not looked for ({prebuilt["why"]}): building from source'
                     + ('; --prebuilt-sha256 is not used' if opts.prebuilt_sha256 else ''))

    # --- 2. tools --------------------------------------------------------------------------------
    cmake_path = plat.cmake_path or 'cmake'
    if opts.install_cmake and (not plat.cmake
                               or not version_at_least(plat.cmake, release.cmake_min)):
        in_env = plat.python and (plat.python.in_venv or plat.python.is_root)
        user_flags = [] if in_env else ['--user']
        steps.append(Step('cmake',
                          f'Install CMake {release.cmake_min}+ with pip (found {plat.cmake})',
                          'tools', argv=[py, '-m', 'pip', 'install', *user_flags,
                                         *opts.pip_args, CMAKE_PIP_SPEC],
                          log=str(logs / 'cmake.log')))
        if user_flags:
            cmake_path = str(home / '.local' / 'bin' / 'cmake')
        elif plat.python.in_venv:
            # pip puts it beside the venv's python, which is not on PATH unless activated
            cmake_path = str(Path(py).parent / 'cmake')
        else:
            cmake_path = 'cmake'

    # --- 3. source -------------------------------------------------------------------------------
    src = work / 'src'
    tag = f'v{release.version}'
    if opts.source:
        src = Path(opts.source).resolve()
        steps.append(Step(
            'source', f'Use the onnxruntime-genai source at {src}', 'build', action='check_source',
            params={'dir': str(src), 'version': release.version},
            detail=[f'{src}/VERSION_INFO must say {release.version}; '
                    'with git, its commit is printed'], always=True))
    else:
        steps.append(Step(
            'clone', f'Get onnxruntime-genai {release.version} source '
                     f'(tag {tag}, pinned commit {release.commit})',
            'build', action='clone',
            params={'url': GENAI_REPO_URL, 'tag': tag, 'commit': release.commit,
                    'dest': str(src), 'log': str(logs / 'clone.log')},
            detail=[f'(skipped if {src} is already at {release.commit})',
                    '$ ' + shlex.join(['git', 'clone', '--branch', tag, '--depth', '1',
                                       '--single-branch', GENAI_REPO_URL, str(src)]),
                    '$ ' + shlex.join(['git', '-C', str(src), 'rev-parse', 'HEAD'])
                    + f'   # must print {release.commit}']))
    offline_defines: List[str] = []
    if opts.deps_dir:
        deps_dir = Path(opts.deps_dir).resolve()
        deps = local_sources.required_dependencies(src, deps_dir) if src.is_dir() else []
        offline_defines = local_sources.cmake_defines(deps, deps_dir)
        steps.append(Step(
            'deps', f'Check the local dependency folders in {deps_dir} (no downloads)', 'build',
            action='check_deps', params={'source': str(src), 'deps_dir': str(deps_dir)},
            detail=[f'{deps_dir}/{d.folder}/ ({d.url})' for d in deps], always=True))

    # --- 4. ONNX Runtime libraries and headers ---------------------------------------------------
    ort_home = work / 'ort'
    source = ort
    if opts.ort_image:
        image_dir = work / 'ort-image'
        container = f'phi3v-ort-{plan_key(plat, choice, ort)[:8]}'
        for index, argv in enumerate(docker_commands(opts.ort_image, image_dir, container)):
            steps.append(Step(f'ort-image-{index + 1}',
                              f'Copy ONNX Runtime out of the image {opts.ort_image}',
                              'ort', argv=argv, log=str(logs / 'ort-image.log'),
                              allow_fail=argv[:3] == ['docker', 'rm', '-f']))
        source = OrtSource(kind='folder', origin=f'image {opts.ort_image}',
                           lib_dir=image_dir / 'lib',
                           header_dir=image_dir / 'include', version=ort.version if ort else None,
                           main_lib='libonnxruntime.so.1',
                           libs=['libonnxruntime.so.1', 'libonnxruntime_providers_cuda.so',
                                 'libonnxruntime_providers_shared.so'])
    if source is not None:
        title = f'Gather ONNX Runtime {source.version or ""} libraries into {ort_home}'
        steps.append(Step(
            'ort-gather', title.replace('  ', ' '), 'ort', action='gather_ort',
            params={'kind': source.kind, 'origin': source.origin, 'lib_dir': str(source.lib_dir),
                    'header_dir': str(source.header_dir) if source.header_dir else None,
                    'dest': str(ort_home), 'min_api': ort_api_version(release.min_ort),
                    'need_cuda_provider': not opts.cross},
            detail=gather_plan(source, ort_home, need_cuda_provider=not opts.cross)))
    need_api = ort_api_version(release.min_ort)
    if source is None or source.header_dir is None:
        if opts.ort_headers:
            steps.append(Step('ort-headers',
                              f'Copy the ONNX Runtime headers from {opts.ort_headers}', 'ort',
                              action='copy_headers',
                              params={'src': str(opts.ort_headers),
                                      'dest': str(ort_home / 'include')},
                              detail=[f'copy {opts.ort_headers}/*.h -> {ort_home / "include"}/']))
        else:
            version = header_archive(choice, source)
            if version:
                url = ORT_ARCHIVE_URL.format(version=version)
                archive = work / 'downloads' / f'onnxruntime-{version}.tar.gz'
                sha = ORT_SOURCE_ARCHIVES[version]
                steps.append(Step(
                    'ort-headers',
                    f'Get the ONNX Runtime {version} C API headers (pinned source archive)', 'ort',
                    action='fetch_headers',
                    params={'url': url, 'sha256': sha, 'archive': str(archive),
                            'dest': str(ort_home / 'include')},
                    detail=[f'download {url}',
                            f'      -> {archive} (skipped if already there and verified)',
                            f'verify sha256 = {sha} (a mismatch deletes the file and stops)',
                            'extract */include/onnxruntime/core/session/*.h -> '
                            f'{ort_home / "include"}/']))
    steps.append(Step('ort-check',
                      f'Check {ort_home} (libonnxruntime.so link, '
                      + ('' if opts.cross else 'CUDA provider, ') + f'C API >= {need_api})',
                      'ort', action='check_ort_home',
                      params={'dest': str(ort_home), 'min_api': need_api,
                              'need_cuda_provider': not opts.cross},
                      detail=[f'{ort_home}/lib/libonnxruntime.so resolves']
                      + ([] if opts.cross else
                         [f'{ort_home}/lib/libonnxruntime_providers_cuda.so exists'])
                      + [f'{ort_home}/include/onnxruntime_c_api.h '
                         f'has ORT_API_VERSION >= {need_api}'],
                      always=True))

    # --- 5. build --------------------------------------------------------------------------------
    cuda = plat.cuda.path if plat.cuda else '/usr/local/cuda'
    cuda_env: Dict[str, str] = {}
    if opts.cuda_libs == 'python':
        cuda_extra = work / 'cuda-libs'
        steps.append(Step(
            'cuda-libs', f"Gather the CUDA libraries the toolkit lacks from {py}'s nvidia "
                         f'packages into {cuda_extra}', 'build', action='gather_cuda_libs',
            params={'python': py, 'cuda': cuda, 'dest': str(cuda_extra),
                    'cuda_major': plat.cuda.major if plat.cuda else None},
            detail=[f'link the missing headers into {cuda_extra}/include and libcublas.so, '
                    f'libcurand.so, ... (unversioned) into {cuda_extra}/lib'], always=True))
        cuda_env = {'CPATH': f'{cuda_extra}/include:$CPATH',
                    'LIBRARY_PATH': f'{cuda_extra}/lib:$LIBRARY_PATH'}
    build_dir = work / 'build'
    argv = [py, str(src / 'build.py'), '--config', 'Release', '--update', '--build',
            '--skip_tests', '--use_cuda', '--cuda_home', cuda, '--ort_home', str(ort_home),
            '--build_dir', str(build_dir)]
    if release.skip_csharp_flag:
        argv.append('--skip_csharp')
    if release.skip_examples_flag:
        argv.append('--skip_examples')
    guidance, why_guidance = use_guidance(plat, choice, opts)
    notes.append(f'guidance (constrained answers): {"built in" if guidance else "not built"}: '
                 f'{why_guidance}')
    if guidance:
        argv.append('--use_guidance')
    if cmake_path != 'cmake':
        argv += ['--cmake_path', cmake_path]
    argv += ['--cmake_extra_defines', f'CMAKE_CUDA_ARCHITECTURES={arch}', 'ENABLE_TESTS=OFF',
             'ENABLE_MODEL_BENCHMARK=OFF', f'Python_EXECUTABLE={py}', f'PYTHON_EXECUTABLE={py}']
    argv += offline_defines
    env = {'CUDA_PATH': cuda, 'CUDA_HOME': cuda, 'CUDACXX': f'{cuda}/bin/nvcc',
           'PATH': f'{cuda}/bin:$PATH', 'CMAKE_BUILD_PARALLEL_LEVEL': str(jobs),
           'MAKEFLAGS': f'-j{jobs}', **cuda_env}
    if opts.cross:
        toolchain = work / 'aarch64-toolchain.cmake'
        steps.append(Step('cross-toolchain', f'Write the CMake toolchain file {toolchain}',
                          'build', action='write_file',
                          params={'path': str(toolchain),
                                  'text': cross_mod.toolchain_file(opts.cross.prefix)},
                          detail=cross_mod.toolchain_file(opts.cross.prefix).splitlines()[1:],
                          always=True))
        argv += cross_mod.cmake_defines(opts.cross, toolchain)
        # the wheel made by pip wheel on this machine is tagged for the target
        env['_PYTHON_HOST_PLATFORM'] = 'linux-aarch64'
        if guidance:
            rust_defines, rust_env = cross_mod.guidance_settings(opts.cross.prefix)
            argv += rust_defines
            env.update(rust_env)
    if opts.deps_dir:
        # the wheel is made by `pip wheel .`: offline, with the setuptools already installed
        # (PIP_NO_BUILD_ISOLATION=0 is pip's spelling of --no-build-isolation)
        env.update({'PIP_NO_INDEX': '1', 'PIP_NO_BUILD_ISOLATION': '0'})
    steps.append(Step(
        'build', f'Build onnxruntime-genai {release.version} with CUDA for sm_{arch}, {jobs} jobs '
        f'(resumes an interrupted build)', 'build', argv=argv, cwd=str(src), env=env,
        log=str(logs / 'build.log'), progress=True))
    predicted = wheel_name(choice, plat)
    steps.append(Step('collect-wheel', 'Collect the wheel', 'build', action='collect_wheel',
                      params={'dir': str(build_dir / 'Release' / 'wheel'),
                              'dest': str(work / 'dist'), 'expected': predicted},
                      detail=[f'copy {build_dir / "Release" / "wheel"}/onnxruntime_genai*.whl -> '
                              f'{work / "dist"}/ (expected: {predicted}); print its sha256']))

    if opts.cross:
        steps.append(Step(
            'check-target', 'Check the wheel as a JetPack 6 Jetson would load it', 'build',
            action='check_cross_wheel',
            params={'compute_capability': arch, 'python': opts.cross.python_version},
            detail=['every shared library: ELF aarch64; what it needs (NEEDED) is its own, the '
                    "system's or JetPack 6's CUDA (libcudart.so.12, ...); glibc/libstdc++ "
                    "symbol versions no newer than Ubuntu 22.04's; GPU code for "
                    f'sm_{arch}; the {python_tag(plat)} aarch64 Python extension'],
            always=True))

    # --- 6. install and check --------------------------------------------------------------------
    wheel = str(work / 'dist' / predicted)
    pythonpath = {'PYTHONPATH': f'{opts.package_root}:$PYTHONPATH'} if opts.package_root else {}
    tiny = work / 'tiny-model'
    if opts.cross:
        steps += _emulated_checks(opts, work, logs, tiny, guidance)
        after += _jetson_install_lines(predicted)
    else:
        _native_install(steps, after, py, plat, opts, wheel, work, logs, tiny, pythonpath)
    return Plan(steps=steps, work_dir=work, key=plan_key(plat, choice, ort), jobs=jobs,
                jobs_reason=jobs_reason, notes=notes, after=after, wheel=wheel)


def _native_install(steps: List[Step], after: List[str], py: str, plat: Platform,
                    opts: Options, wheel: str, work: Path, logs: Path, tiny: Path,
                    pythonpath: Dict[str, str]) -> None:
    """Add the install and post-install check steps (or, without --install, their commands)."""
    install_argv = [py, '-m', 'pip', 'install', *_pip_install_flags(plat, opts), '{wheel}']
    checks = [
        Step('check-import', 'Check: onnxruntime_genai imports in the ROS Python', 'verify',
             argv=[py, '-c', IMPORT_CHECK], cwd=str(work), log=str(logs / 'checks.log'),
             always=True),
        Step('check-cuda', 'Check: og.is_cuda_available() is True', 'verify',
             argv=[py, '-c', CUDA_CHECK], cwd=str(work), log=str(logs / 'checks.log'),
             always=True),
        Step('tiny-model', f'Write the tiny test model to {tiny}', 'verify',
             argv=[py, '-m', 'phi3v_ros.tools.make_tiny_model', str(tiny)], cwd=str(work),
             env=dict(pythonpath), log=str(logs / 'checks.log'), always=True),
        Step('check-generate', 'Check: a generation on the tiny model runs with provider cuda',
             'verify', argv=[py, '-c', GENERATE_CHECK, str(tiny), 'cuda'], cwd=str(work),
             env=dict(pythonpath), log=str(logs / 'checks.log'), always=True),
        # a prebuilt wheel may or may not have guidance: said, not failed, when not asked for
        Step('check-guidance', 'Check: a constrained answer (choices yes/no) on the tiny model',
             'verify', argv=[py, '-c', GUIDANCE_CHECK, str(tiny), 'cuda'], cwd=str(work),
             env=dict(pythonpath), log=str(logs / 'checks.log'), always=True,
             allow_fail=opts.guidance != 'on'),
    ]
    if opts.install:
        steps.append(Step('install', f'Install the wheel into {py} '
                                     '(no dependencies: onnxruntime-gpu is there)',
                          'install', argv=install_argv, log=str(logs / 'install.log'),
                          always=True))
        steps += checks
        after.append('next: ros2 run phi3v_ros fetch_model'
                     '   (downloads the model and prints model_path)')
    else:
        after.append('install and check it (or rerun with --install):')
        after.append('  $ ' + _render_argv(install_argv, wheel))
        for check in checks:
            after.append('  $ ' + _render_env(check.env) + _render_argv(check.argv))


def _emulated_checks(opts: Options, work: Path, logs: Path, tiny: Path,
                     guidance: bool) -> List[Step]:
    """
    Return the post-install checks that need no GPU, run on Arm under --emulator-python.

    The wheel goes into its own folder (pip --target), put first on the emulated Python's path:
    that Python's own onnxruntime (PyPI's aarch64 CPU build), numpy and onnx are used.
    """
    emulator = opts.cross.emulator if opts.cross else []
    if not emulator:
        return []
    site = work / 'arm-site'
    path = {'PYTHONPATH': f'{site}:{opts.package_root}' if opts.package_root else str(site)}
    log = str(logs / 'arm-checks.log')
    return [
        Step('arm-install', f'Install the wheel into {site} with the emulated Python', 'verify',
             argv=[*emulator, '-m', 'pip', 'install', '--no-deps', '--no-index',
                   '--force-reinstall', '--upgrade', '--target', str(site), '{wheel}'],
             log=log, always=True),
        Step('arm-import', 'Check on Arm: onnxruntime_genai imports (its version)', 'verify',
             argv=[*emulator, '-c', IMPORT_CHECK], cwd=str(work), env=dict(path), log=log,
             always=True),
        Step('arm-tiny-model', f'Write the tiny test model to {tiny} on Arm', 'verify',
             argv=[*emulator, '-m', 'phi3v_ros.tools.make_tiny_model', str(tiny)],
             cwd=str(work), env=dict(path), log=log, always=True),
        Step('arm-generate', 'Check on Arm: a generation on the tiny model with provider cpu',
             'verify', argv=[*emulator, '-c', GENERATE_CHECK, str(tiny), 'cpu'],
             cwd=str(work), env=dict(path), log=log, always=True),
        Step('arm-guidance', 'Check on Arm: a constrained answer (choices yes/no), provider cpu',
             'verify', argv=[*emulator, '-c', GUIDANCE_CHECK, str(tiny), 'cpu'],
             cwd=str(work), env=dict(path), log=log, always=True,
             allow_fail=not guidance),
    ]


def _jetson_install_lines(wheel_file: str) -> List[str]:
    """Return what to run on the Jetson with the cross-built wheel (its GPU checks)."""
    return ['copy $WORK/dist/' + wheel_file + ' to the Jetson (JetPack 6, onnxruntime-gpu and '
            'phi3v_ros installed: sections 2 and 3), then there:',
            f'  $ python3 -m pip install --no-deps --force-reinstall --user {wheel_file}',
            '  $ ' + shlex.join(['python3', '-c', CUDA_CHECK]),
            '  $ python3 -m phi3v_ros.tools.make_tiny_model /tmp/tiny-model',
            '  $ ' + shlex.join(['python3', '-c', GENERATE_CHECK, '/tmp/tiny-model', 'cuda'])]


def _render_env(env: Dict[str, str]) -> str:
    return ''.join(f'{k}={shlex.quote(v) if "$" not in v else v} ' for k, v in env.items())


def _render_argv(argv: List[str], wheel: Optional[str] = None) -> str:
    return shlex.join([wheel if (wheel and part == '{wheel}') else part for part in argv])


def render_plan(plan: Plan, wheel: Optional[str] = None, short: bool = True) -> List[str]:
    """
    Every step and the exact command it runs, for --dry-run.

    With ``short`` the work folder is written $WORK (set on the first line), so the commands stay
    readable and can still be pasted into a shell after that line.
    """
    lines = [f'Plan: {len(plan.steps)} steps',
             f'      export WORK={plan.work_dir}'
             if short and shlex.quote(str(plan.work_dir)) == str(plan.work_dir)
             else f'      work folder {plan.work_dir}',
             f'      compile jobs: {plan.jobs} ({plan.jobs_reason})',
             f'      progress is kept in {plan.work_dir / "state.json"}: '
             'rerunning the same command resumes']
    for note in plan.notes:
        lines.append(f'      note: {note}')
    width = len(str(len(plan.steps)))
    for number, step in enumerate(plan.steps, 1):
        flags = []
        if step.fallback:
            flags.append('prebuilt; on failure: build from source')
        if step.always:
            flags.append('runs every time')
        if step.allow_fail:
            flags.append('may fail')
        suffix = f'  [{"; ".join(flags)}]' if flags else ''
        lines.append(f'{number:>{width}}. [{step.id}] {step.title}{suffix}')
        pad = ' ' * (width + 5)
        if step.argv is not None:
            command = _render_env(step.env) + _render_argv(step.argv, wheel or plan.wheel)
            lines.append(f'{pad}$ {command}')
            if step.cwd:
                lines.append(f'{pad}  (in {step.cwd})')
            if step.log:
                lines.append(f'{pad}  (output to {step.log})')
        for line in step.detail:
            lines.append(f'{pad}{line}')
    if plan.after:
        lines.append('')
        lines += plan.after
    if short and shlex.quote(str(plan.work_dir)) == str(plan.work_dir):
        work = str(plan.work_dir)
        lines = lines[:2] + [line.replace(work, '$WORK') for line in lines[2:]]
    return lines
