"""
``build_genai_wheel --cross``: the Jetson wheel built on an x86_64 machine.

The parts (toolkit, compilers, Python headers) are stand-ins in tmp_path: what is tested is that
the builder checks them, plans the exact cross build, and reads a wheel as a Jetson would. The
real cross build (minutes, and a CUDA 12 toolkit with the aarch64 target) is measured by
bench/build_wheel.py and written up in docs/jetson.md 4d.
"""
import dataclasses
from pathlib import Path
import shlex
import sys
import sysconfig
import zipfile

from phi3v_ros.tools import build_genai_wheel as tool
from phi3v_ros.tools.genai_wheel import cross
from phi3v_ros.tools.genai_wheel import versions as V
from phi3v_ros.tools.genai_wheel.ort_libs import from_folder, gather, OrtError
from phi3v_ros.tools.genai_wheel.plan import make_plan, Options
from phi3v_ros.tools.genai_wheel.platform import CudaInstall, preset_platform
import pytest

AARCH64_ELF = b'\x7fELF\x02\x01\x01' + b'\x00' * 11 + (183).to_bytes(2, 'little') + b'\x00' * 44
X86_64_ELF = b'\x7fELF\x02\x01\x01' + b'\x00' * 11 + (62).to_bytes(2, 'little') + b'\x00' * 44


def script(path: Path, output: str) -> Path:
    path.write_text(f'#!/bin/sh\necho {shlex.quote(output)}\n')
    path.chmod(0o755)
    return path


def fake_toolkit(root: Path, release='12.4', machine=AARCH64_ELF, leave_out=()) -> Path:
    """Make a CUDA toolkit with the aarch64 target: an nvcc that tells its release, the files."""
    (root / 'bin').mkdir(parents=True)
    script(root / 'bin' / 'nvcc', f'Cuda compilation tools, release {release}, V{release}.131')
    target = root / 'targets' / 'aarch64-linux'
    for header in cross.CUDA_HEADERS:
        if header not in leave_out:
            (target / 'include' / header).parent.mkdir(parents=True, exist_ok=True)
            (target / 'include' / header).write_text('/* */\n')
    (target / 'lib').mkdir(parents=True)
    for library in cross.CUDA_LIBRARIES:
        if library not in leave_out:
            (target / 'lib' / library).write_bytes(machine)
    return root


def fake_python_include(root: Path, version='3.10.12') -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / 'Python.h').write_text('/* */\n')
    (root / 'pyconfig.h').write_text('#define SIZEOF_LONG 8\n')
    (root / 'patchlevel.h').write_text(f'#define PY_VERSION "{version}"\n')
    return root


def fake_compilers(folder: Path, version='12.2.0') -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ('gcc', 'g++'):
        script(folder / f'aarch64-linux-gnu-{name}', version)
    return f'{folder}/aarch64-linux-gnu-'


def fake_ort(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'libonnxruntime.so.1.23.2').write_bytes(AARCH64_ELF)
    (folder / 'libonnxruntime_providers_shared.so').write_bytes(AARCH64_ELF)
    return folder


def a_cross_build(tmp_path, **overrides):
    values = {'prefix': fake_compilers(tmp_path / 'bin'),
              'python_include': fake_python_include(tmp_path / 'include' / 'python3.10'),
              'python_version': '3.10'}
    values.update(overrides)
    return cross.CrossBuild(**values)


def problems_of(tmp_path, cross_build=None, cuda_home='default', host_python='3.10.13',
                ort_lib_dir='default', machine='x86_64'):
    if cuda_home == 'default':
        cuda_home = tmp_path / 'cuda'
        if not cuda_home.exists():
            fake_toolkit(cuda_home)
    ort_lib_dir = fake_ort(tmp_path / 'ort') if ort_lib_dir == 'default' else ort_lib_dir
    cross_build = dataclasses.replace(
        cross_build or a_cross_build(tmp_path), cuda_home=cuda_home,
        cuda_version=cross.nvcc_version(cuda_home) if cuda_home else None)
    return cross.check_cross(cross_build, host_python, ort_lib_dir, '9', machine)


# ---------------------------------------------------------------------------------- the parts

def test_every_part_in_place_passes(tmp_path):
    assert problems_of(tmp_path) == []
    # JetPack's own minor: nvcc says 12.6.131, compared as 12.6
    assert problems_of(tmp_path, cuda_home=fake_toolkit(tmp_path / 'cuda-12.6', '12.6')) == []


@pytest.mark.parametrize('release, said', [('13.0', 'CUDA 13.0'), ('12.8', 'at most 12.6'),
                                           ('11.8', 'CUDA 11.8')])
def test_a_toolkit_jetpack_6_cannot_run_is_refused(tmp_path, release, said):
    problems = problems_of(tmp_path, cuda_home=fake_toolkit(tmp_path / 'cuda', release))
    assert len(problems) == 1 and said in problems[0][0], problems
    assert 'cuda-cross-aarch64-12-6' in problems[0][1]


def test_a_toolkit_without_the_aarch64_target_names_what_it_lacks(tmp_path):
    toolkit = fake_toolkit(tmp_path / 'cuda', leave_out=('libcudadevrt.a', 'cub/cub.cuh'))
    (what, fix), = problems_of(tmp_path, cuda_home=toolkit)
    assert 'cub/cub.cuh' in what and 'libcudadevrt.a' in what


def test_x86_64_libraries_in_the_target_folder_are_refused(tmp_path):
    toolkit = fake_toolkit(tmp_path / 'cuda', machine=X86_64_ELF)
    (what, fix), = problems_of(tmp_path, cuda_home=toolkit)
    assert 'libcudart.so is x86_64, not aarch64' in what


def test_no_toolkit_and_no_nvcc_that_runs(tmp_path):
    assert 'no CUDA toolkit' in problems_of(tmp_path, cuda_home=None)[0][0]
    broken = tmp_path / 'broken'
    (broken / 'bin').mkdir(parents=True)
    assert 'does not run here' in problems_of(tmp_path, cuda_home=broken)[0][0]


def test_a_cuda_home_whose_nvcc_does_not_run_is_said_once_by_its_name(tmp_path):
    broken = tmp_path / 'broken'
    (broken / 'bin').mkdir(parents=True)
    lines = []
    tool.main(['--cross', '--dry-run', '--cuda-home', str(broken), '--cross-prefix',
               fake_compilers(tmp_path / 'bin'), '--target-python-include',
               str(fake_python_include(tmp_path / 'include' / 'python3.10')), '--ort-source',
               str(fake_ort(tmp_path / 'ort')), '--python', sys.executable,
               '--work-dir', str(tmp_path / 'work')], out=lines.append)
    text = '\n'.join(lines)
    assert f'ERROR: {broken}/bin/nvcc does not run here' in text, text
    assert 'no CUDA toolkit' not in text, text


def test_missing_or_old_cross_compiler(tmp_path):
    missing = problems_of(tmp_path, a_cross_build(tmp_path, prefix=f'{tmp_path}/none-'))
    assert 'no aarch64 C++ compiler' in missing[0][0]
    assert 'g++-aarch64-linux-gnu' in missing[0][1]
    old = a_cross_build(tmp_path, prefix=fake_compilers(tmp_path / 'old', '8.4.0'))
    assert 'older than the 9' in problems_of(tmp_path, old)[0][0]


def test_python_headers_and_the_building_python_must_be_the_targets_minor(tmp_path):
    wrong = a_cross_build(tmp_path, python_include=fake_python_include(tmp_path / 'py311',
                                                                       '3.11.2'))
    assert 'is not Python 3.10 (3.11)' in problems_of(tmp_path, wrong)[0][0]
    none = a_cross_build(tmp_path, python_include=tmp_path / 'nothing')
    assert 'no Python.h' in problems_of(tmp_path, none)[0][0]
    (what, fix), = problems_of(tmp_path, host_python='3.12.1')
    assert 'is 3.12.1, not 3.10' in what and 'cp310' in what


def test_onnx_runtime_must_be_aarch64_and_is_needed(tmp_path):
    (what, fix), = problems_of(tmp_path, ort_lib_dir=None)
    assert 'no aarch64 ONNX Runtime' in what and 'manylinux_2_28_aarch64' in fix
    x86 = tmp_path / 'x86'
    x86.mkdir()
    (x86 / 'libonnxruntime.so.1.23.2').write_bytes(X86_64_ELF)
    (what, fix), = problems_of(tmp_path, ort_lib_dir=x86)
    assert 'for x86_64, not aarch64' in what


def test_on_an_aarch64_machine_cross_is_refused(tmp_path):
    (what, fix), = problems_of(tmp_path, machine='aarch64')
    assert 'builds on an x86_64 machine' in what


def test_an_emulated_python_that_lacks_the_packages_is_refused(tmp_path):
    emulated = script(tmp_path / 'py-arm', 'ModuleNotFoundError: No module named onnxruntime')
    emulated.write_text('#!/bin/sh\necho "No module named onnxruntime" >&2\nexit 1\n')
    build = a_cross_build(tmp_path, emulator=[str(emulated)])
    (what, fix), = problems_of(tmp_path, build)
    assert 'does not run Python 3.10 with onnxruntime' in what and 'onnxruntime' in what


def test_a_cpu_onnx_runtime_is_gathered_for_a_cross_build_only(tmp_path):
    source = from_folder(fake_ort(tmp_path / 'ort'))
    with pytest.raises(OrtError, match='CPU-only'):
        gather(source, tmp_path / 'home')
    done = gather(source, tmp_path / 'cross-home', need_cuda_provider=False)
    assert 'linked libonnxruntime.so -> libonnxruntime.so.1.23.2' in done
    assert (tmp_path / 'cross-home' / 'lib' / 'libonnxruntime.so').resolve().is_file()


# ---------------------------------------------------------------------------------- the plan

def cross_plan(tmp_path, emulator=()):
    build = a_cross_build(tmp_path, emulator=list(emulator))
    plat = preset_platform('jp6-orin')
    plat.cuda = CudaInstall('/opt/cuda-12.4-aarch64', '12.4')
    plat.python.path = '/opt/py310/bin/python'
    source = from_folder(fake_ort(tmp_path / 'ort'))
    choice = V.choose_versions(source.version, '0.9.2')
    opts = Options(work_root=tmp_path / 'work', package_root=Path('/ws/src/phi3v_ros'),
                   cross=build, build_from_source=True)
    return build, make_plan(plat, choice, source, opts)


def test_the_cross_build_command_is_exact(tmp_path):
    build, plan = cross_plan(tmp_path)
    work = tmp_path / 'work' / 'genai-0.9.2-ort-1.23.2-sm87-cuda12.4-py3.10-cross'
    assert plan.work_dir == work
    assert [s.id for s in plan.steps] == ['workdir', 'clone', 'ort-gather', 'ort-headers',
                                          'ort-check', 'cross-toolchain', 'build',
                                          'collect-wheel', 'check-target']
    step = {s.id: s for s in plan.steps}
    toolchain = work / 'aarch64-toolchain.cmake'
    assert step['cross-toolchain'].params == {'path': str(toolchain),
                                              'text': cross.toolchain_file(build.prefix)}
    argv = step['build'].argv
    defines = argv[argv.index('--cmake_extra_defines') + 1:]
    assert defines[-6:] == [
        f'CMAKE_TOOLCHAIN_FILE={toolchain}', f'CMAKE_CUDA_HOST_COMPILER={build.prefix}g++',
        f'Python_INCLUDE_DIR={build.python_include}',
        f'PYTHON_INCLUDE_DIR={build.python_include}',
        'PYTHON_MODULE_EXTENSION=.cpython-310-aarch64-linux-gnu.so',
        'PYTHON_MODULE_DEBUG_POSTFIX=']
    assert 'CMAKE_CUDA_ARCHITECTURES=87' in defines
    assert step['build'].env['_PYTHON_HOST_PLATFORM'] == 'linux-aarch64'
    assert step['build'].env['CUDACXX'] == '/opt/cuda-12.4-aarch64/bin/nvcc'
    assert step['ort-gather'].params['need_cuda_provider'] is False
    assert step['ort-check'].params['need_cuda_provider'] is False
    assert step['collect-wheel'].params['expected'] == \
        'onnxruntime_genai_cuda-0.9.2-cp310-cp310-linux_aarch64.whl'
    assert step['check-target'].params == {'compute_capability': '87', 'python': '3.10'}
    # nothing is installed here: the Jetson's own commands are printed
    assert any('python3 -m pip install --no-deps --force-reinstall --user '
               'onnxruntime_genai_cuda-0.9.2-cp310-cp310-linux_aarch64.whl' in line
               for line in plan.after)
    assert any('is_cuda_available' in line for line in plan.after)


def test_the_toolchain_file_names_the_cross_compilers_and_a_shared_cudart():
    text = cross.toolchain_file('aarch64-linux-gnu-')
    for line in ('set(CMAKE_SYSTEM_NAME Linux)', 'set(CMAKE_SYSTEM_PROCESSOR aarch64)',
                 'set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)',
                 'set(CMAKE_CUDA_HOST_COMPILER aarch64-linux-gnu-g++)',
                 'set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)'):
        assert line in text.splitlines()


def test_with_an_emulator_the_checks_run_on_arm_with_provider_cpu(tmp_path):
    build, plan = cross_plan(tmp_path, emulator=['qemu-aarch64', '-L', '/sysroot',
                                                 '/py/bin/python3.10'])
    arm = [s for s in plan.steps if s.id.startswith('arm-')]
    assert [s.id for s in arm] == ['arm-install', 'arm-import', 'arm-tiny-model',
                                   'arm-generate', 'arm-guidance']
    site = plan.work_dir / 'arm-site'
    assert arm[0].argv[:4] == ['qemu-aarch64', '-L', '/sysroot', '/py/bin/python3.10']
    assert arm[0].argv[-3:] == ['--target', str(site), '{wheel}']
    assert arm[3].argv[-2:] == [str(plan.work_dir / 'tiny-model'), 'cpu']
    assert all(s.env['PYTHONPATH'] == f'{site}:/ws/src/phi3v_ros' for s in arm[1:])
    # guidance is not built offline: its check may fail without failing the build
    assert arm[4].allow_fail and not arm[3].allow_fail


def test_cross_refuses_what_it_cannot_do(tmp_path):
    lines = []
    assert tool.main(['--cross', '--install'], out=lines.append) == 2
    assert 'does not combine with' in lines[-1]


def test_the_dry_run_of_a_cross_build_shows_the_target_and_the_checks(tmp_path):
    toolkit = fake_toolkit(tmp_path / 'cuda')
    include = fake_python_include(tmp_path / 'include' / 'python3.10')
    prefix = fake_compilers(tmp_path / 'bin')
    ort = fake_ort(tmp_path / 'ort')
    headers = tmp_path / 'headers'
    headers.mkdir()
    (headers / 'onnxruntime_c_api.h').write_text('#define ORT_API_VERSION 23\n')
    lines = []
    status = tool.main(['--cross', '--dry-run', '--cuda-home', str(toolkit), '--cross-prefix',
                        prefix, '--target-python-include', str(include), '--ort-source',
                        str(ort), '--ort-headers', str(headers), '--python', sys.executable,
                        '--work-dir', str(tmp_path / 'work')], out=lines.append)
    text = '\n'.join(lines)
    assert status == 0, text
    assert 'Cross build (--cross) for --target jp6-orin' in text
    assert 'CUDA 12.4 at' in text and 'sm_87' in text
    assert '[cross-toolchain]' in text and '[check-target]' in text
    assert 'NO CUDA provider' in text       # said, and not an error for a cross build
    assert 'has no libonnxruntime_providers_cuda.so' not in text
    if sys.version_info[:2] != (3, 10):
        assert 'the wheel takes its tag (cp310) from it' in text


# ------------------------------------------------------------------------- reading the wheel

def test_elf_machine_reads_the_header(tmp_path):
    (tmp_path / 'a').write_bytes(AARCH64_ELF)
    (tmp_path / 'b').write_bytes(X86_64_ELF)
    (tmp_path / 'c').write_bytes(b'not an ELF file at all')
    assert [cross.elf_machine(tmp_path / n) for n in 'abc'] == ['aarch64', 'x86_64', None]


def report(name, machine='aarch64', needed=('libc.so.6',), versions=None, gpu=()):
    return cross.LibraryReport(name, machine, list(needed), dict(versions or {'GLIBC': '2.34'}),
                               list(gpu))


WHEEL = 'onnxruntime_genai_cuda-0.9.2-cp310-cp310-linux_aarch64.whl'
GOOD = [report('onnxruntime_genai/onnxruntime_genai.cpython-310-aarch64-linux-gnu.so',
               needed=('libonnxruntime-genai.so', 'libstdc++.so.6', 'libc.so.6'),
               versions={'GLIBC': '2.34', 'GLIBCXX': '3.4.30', 'CXXABI': '1.3.13'}),
        report('onnxruntime_genai/libonnxruntime-genai.so'),
        report('onnxruntime_genai/libonnxruntime-genai-cuda.so',
               needed=('libcudart.so.12', 'libcublas.so.12', 'libcurand.so.10', 'libc.so.6'),
               gpu=('sm_87', 'runs on sm_87: sm_87'))]


def test_a_wheel_a_jetpack_6_jetson_loads_has_no_problems():
    assert cross.wheel_problems(Path(WHEEL), GOOD, '87', '3.10') == []


@pytest.mark.parametrize('change, said', [
    (lambda r: setattr(r[1], 'machine', 'x86_64'), 'libonnxruntime-genai.so is x86_64'),
    (lambda r: r[2].needed.append('libcudart.so.13'), 'needs libcudart.so.13'),
    (lambda r: r[1].symbol_versions.update(GLIBC='2.36'), 'needs GLIBC_2.36, newer than'),
    (lambda r: r[0].symbol_versions.update(GLIBCXX='3.4.32'), 'needs GLIBCXX_3.4.32'),
    (lambda r: setattr(r[2], 'gpu', ['sm_90']), 'has no GPU code for sm_87'),
    (lambda r: r.pop(2), 'not a CUDA build'),
    (lambda r: r.pop(0), 'no Python extension for cp310'),
])
def test_what_would_stop_it_on_the_jetson_is_named(change, said):
    reports = [cross.LibraryReport(r.name, r.machine, list(r.needed), dict(r.symbol_versions),
                                   list(r.gpu)) for r in GOOD]
    change(reports)
    problems = cross.wheel_problems(Path(WHEEL), reports, '87', '3.10')
    assert any(said in problem for problem in problems), problems


def test_a_wheel_tagged_for_this_machine_is_refused():
    problems = cross.wheel_problems(Path(WHEEL.replace('aarch64', 'x86_64')), GOOD, '87', '3.10')
    assert problems == [f'{WHEEL.replace("aarch64", "x86_64")} is not tagged '
                        'cp310-cp310-linux_aarch64']


def test_read_wheel_reads_real_libraries_with_readelf(tmp_path):
    """This machine's own extension modules stand in: real ELF files, read as the Jetson would."""
    library = Path(sysconfig.get_paths()['stdlib']) / 'lib-dynload'
    module = next(library.glob('_json*.so'), None) or next(library.glob('*.so'))
    wheel = tmp_path / WHEEL
    with zipfile.ZipFile(wheel, 'w') as archive:
        archive.write(module, f'onnxruntime_genai/{module.name}')
    try:
        reports = cross.read_wheel(wheel, '87')
    except cross.CrossError as exc:
        pytest.skip(str(exc))
    assert [r.machine for r in reports] == [cross.elf_machine(module)]
    assert reports[0].gpu == []
    problems = cross.wheel_problems(wheel, reports, '87', '3.10')
    if reports[0].machine != 'aarch64':
        assert any('not aarch64' in p for p in problems)
    assert 'no library holds GPU code: not a CUDA build' in problems


def test_an_offline_build_without_header_folder_says_how_to_get_one(tmp_path):
    """--deps-dir forbids downloads, so the pinned header archive cannot be the source."""
    args = ['--cross', '--dry-run', '--cuda-home', str(fake_toolkit(tmp_path / 'cuda')),
            '--cross-prefix', fake_compilers(tmp_path / 'bin'), '--target-python-include',
            str(fake_python_include(tmp_path / 'include' / 'python3.10')), '--ort-source',
            str(fake_ort(tmp_path / 'ort')), '--python', sys.executable, '--genai-version',
            '0.9.2', '--deps-dir', str(tmp_path / 'deps'), '--source', str(tmp_path / 'src'),
            '--work-dir', str(tmp_path / 'work')]
    lines = []
    tool.main(args, out=lines.append)
    text = '\n'.join(lines)
    assert 'an offline build (--deps-dir) has no ONNX Runtime C API headers' in text
    assert 'libonnxruntime-dev' in text and 'ONNX Runtime 1.22 or newer' in text
    headers = tmp_path / 'headers'
    headers.mkdir()
    lines = []
    tool.main(args + ['--ort-headers', str(headers)], out=lines.append)
    assert 'has no ONNX Runtime C API headers' not in '\n'.join(lines)


def test_the_dry_run_goes_on_past_a_missing_onnx_runtime_folder(tmp_path):
    """Reported: it stopped until --ort-source existed, before listing the dependency folders."""
    lines = []
    status = tool.main(['--dry-run', '--non-jetson', '--cuda-arch', '90', '--genai-version',
                        '0.9.2', '--ort-source', str(tmp_path / 'not-yet'), '--source',
                        str(tmp_path / 'src'), '--deps-dir', str(tmp_path / 'deps'),
                        '--python', sys.executable, '--work-dir', str(tmp_path / 'work')],
                       out=lines.append)
    text = '\n'.join(lines)
    assert status == 0, text
    assert f'ERROR: --ort-source {tmp_path / "not-yet"}: ' in text and 'is not a folder' in text
    assert 'no ONNX Runtime GPU libraries found' not in text
    for folder in ('pybind11', 'googletest', 'onnxruntime_extensions', 'gsl', 'dlib', 'dr_libs',
                   'nlohmann_json'):
        assert f'{tmp_path / "deps" / folder}' in text, folder


def test_guidance_is_built_for_aarch64_where_rust_has_the_target(tmp_path):
    # online (no --deps-dir) with cargo: built when Rust has the aarch64 standard library
    plat = preset_platform('jp6-orin')
    plat.cuda = CudaInstall('/opt/cuda-12.4-aarch64', '12.4')
    plat.cargo = '1.95.0'
    source = from_folder(fake_ort(tmp_path / 'ort'))
    choice = V.choose_versions(source.version, '0.9.2')
    for installed, built in ((False, False), (True, True)):
        opts = Options(work_root=tmp_path / 'work', cross=a_cross_build(
            tmp_path, rust_target_installed=installed), build_from_source=True)
        plan = make_plan(plat, choice, source, opts)
        build_step = next(s for s in plan.steps if s.id == 'build')
        note = next(n for n in plan.notes if n.startswith('guidance'))
        assert ('--use_guidance' in build_step.argv) == built, note
        if built:
            assert 'Rust_CARGO_TARGET=aarch64-unknown-linux-gnu' in build_step.argv
            assert build_step.env['CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER'] == \
                f'{tmp_path}/bin/aarch64-linux-gnu-gcc'
            assert 'for aarch64-unknown-linux-gnu' in note
        else:
            assert 'rustup target add aarch64-unknown-linux-gnu' in note
            assert not any(a.startswith('Rust_CARGO_TARGET') for a in build_step.argv)


def test_a_cross_build_without_onnx_runtime_says_it_once_with_the_download(tmp_path):
    lines = []
    tool.main(['--cross', '--dry-run', '--cuda-home', str(fake_toolkit(tmp_path / 'cuda')),
               '--cross-prefix', fake_compilers(tmp_path / 'bin'), '--target-python-include',
               str(fake_python_include(tmp_path / 'include' / 'python3.10')), '--python',
               sys.executable, '--work-dir', str(tmp_path / 'work')], out=lines.append)
    text = '\n'.join(lines)
    assert 'no aarch64 ONNX Runtime library (--ort-source)' in text
    assert 'no ONNX Runtime GPU libraries found' not in text
