"""
The builder without a Jetson and without the network.

``--non-jetson`` (an x86_64 desktop or aarch64 server builds for its own GPU), ``--source`` (a
local onnxruntime-genai tree), ``--deps-dir`` (every FetchContent dependency as a local folder)
and ``--cuda-libs python`` (cuBLAS, cuRAND, cuFFT from the NVIDIA pip packages).
"""
from pathlib import Path

from phi3v_ros.tools import build_genai_wheel as tool
from phi3v_ros.tools.genai_wheel import cuda_libs
from phi3v_ros.tools.genai_wheel import local_sources as ls
from phi3v_ros.tools.genai_wheel import versions as V
from phi3v_ros.tools.genai_wheel.checks import check_local_sources, check_prerequisites
from phi3v_ros.tools.genai_wheel.plan import make_plan, Options
from phi3v_ros.tools.genai_wheel.platform import preset_platform
from phi3v_ros.tools.genai_wheel.runner import Context
import pytest
from test_build_genai_wheel_fakes import make_probe, python_probe_json
from test_build_genai_wheel_ort import fake_ort_release
from test_build_genai_wheel_runner import FakeMachine

DEPS_TXT = """\
#Name;Url;SHA1
pybind11;https://github.com/pybind/pybind11/archive/refs/tags/v2.13.6.zip;f780
googletest;https://github.com/google/googletest/archive/530d.zip;5e3a
microsoft_wil;https://github.com/microsoft/wil/archive/refs/tags/v1.zip;e4a5
onnxruntime_extensions;https://github.com/microsoft/onnxruntime-extensions.git;9f1f67d6
llguidance;https://github.com/microsoft/llguidance.git;94fa
"""
EXTERNAL_DEPS = """\
if(ENABLE_PYTHON)
  FetchContent_Declare(
    pybind11_project
    URL ${DEP_URL_pybind11}
    URL_HASH SHA1=${DEP_SHA1_pybind11}
    FIND_PACKAGE_ARGS 2.6 NAMES pybind11
  )
endif()
FetchContent_Declare(googletest URL ${DEP_URL_googletest} URL_HASH SHA1=${DEP_SHA1_googletest})
if(USE_DML)
  FetchContent_Declare(microsoft_wil URL ${DEP_URL_microsoft_wil})
endif()
FetchContent_Declare(
  onnxruntime_extensions
  GIT_REPOSITORY ${DEP_URL_onnxruntime_extensions}
  GIT_TAG ${DEP_SHA1_onnxruntime_extensions}
)
"""
EXTENSION_EXTERNALS = {
    'gsl.cmake': 'FetchContent_Declare(\n    GSL\n    URL https://github.com/microsoft/GSL/'
                 'archive/refs/tags/v4.0.0.zip\n    URL_HASH SHA1=cf36\n)\n',
    'dlib.cmake': 'FetchContent_Declare(\n    dlib\n    URL https://github.com/davisking/dlib/'
                  'archive/refs/tags/v19.24.7.zip\n    URL_HASH SHA1=6c63\n)\n',
    'json.cmake': 'FetchContent_Declare(nlohmann_json\n  URL       https://codeload.github.com/'
                  'nlohmann/json/zip/refs/tags/v3.11.3\n  URL_HASH  SHA1=5e88\n  )\n',
    # not in the ort_genai preset: must not be asked for
    'opencv.cmake': 'FetchContent_Declare(opencv URL https://example.invalid/opencv.zip)\n',
}
ALL_FOLDERS = ('pybind11', 'googletest', 'onnxruntime_extensions', 'gsl', 'dlib',
               'nlohmann_json')
# a release whose dependencies the builder does not pin (RELEASE_DEPENDENCIES): its folders are
# read from the tree and only their existence is checked, so the made-up ones above do
UNPINNED = '0.8.3'


def genai_tree(root, version=UNPINNED, deps_txt=DEPS_TXT):
    """Write the parts of an onnxruntime-genai source tree the builder reads."""
    root = Path(root)
    (root / 'cmake' / 'external').mkdir(parents=True)
    (root / 'VERSION_INFO').write_text(version + '\n')
    (root / 'build.py').write_text('# build\n')
    (root / 'cmake' / 'deps.txt').write_text(deps_txt)
    (root / 'cmake' / 'external' / 'onnxruntime_external_deps.cmake').write_text(EXTERNAL_DEPS)
    return root


def deps_folder(root, folders=ALL_FOLDERS):
    """Write a --deps-dir with these dependency folders (extensions with its externals)."""
    root = Path(root)
    for folder in folders:
        (root / folder).mkdir(parents=True)
        (root / folder / 'CMakeLists.txt').write_text('project(x)\n')
    if 'onnxruntime_extensions' in folders:
        externals = root / 'onnxruntime_extensions' / 'cmake' / 'externals'
        externals.mkdir(parents=True)
        for name, text in EXTENSION_EXTERNALS.items():
            (externals / name).write_text(text)
    return root


# ------------------------------------------------------------------------------ local_sources

def test_the_dependencies_are_read_from_the_source_and_the_extensions(tmp_path):
    source, deps = genai_tree(tmp_path / 'src'), deps_folder(tmp_path / 'deps')
    found = ls.required_dependencies(source, deps)
    assert [d.folder for d in found] == ['pybind11', 'googletest', 'onnxruntime_extensions',
                                         'gsl', 'dlib', 'nlohmann_json']
    by_folder = {d.folder: d for d in found}
    # the FetchContent name, not the deps.txt one, names the cache variable
    assert by_folder['pybind11'].cache_variable == 'FETCHCONTENT_SOURCE_DIR_PYBIND11_PROJECT'
    assert by_folder['gsl'].cache_variable == 'FETCHCONTENT_SOURCE_DIR_GSL'
    assert by_folder['onnxruntime_extensions'].is_git and by_folder['onnxruntime_extensions'] \
        .pin == '9f1f67d6'
    assert not by_folder['dlib'].is_git and by_folder['dlib'].url.endswith('v19.24.7.zip')


def test_the_cmake_settings_point_every_dependency_at_its_folder_offline(tmp_path):
    source, deps = genai_tree(tmp_path / 'src'), deps_folder(tmp_path / 'deps')
    defines = ls.cmake_defines(ls.required_dependencies(source, deps), deps)
    assert defines[0] == 'FETCHCONTENT_FULLY_DISCONNECTED=ON'
    assert f'FETCHCONTENT_SOURCE_DIR_NLOHMANN_JSON={deps.resolve() / "nlohmann_json"}' in defines
    assert len(defines) == 1 + len(ALL_FOLDERS)


def test_missing_dependency_folders_are_named_with_what_to_put_there(tmp_path):
    source = genai_tree(tmp_path / 'src')
    deps = deps_folder(tmp_path / 'deps',
                       [f for f in ALL_FOLDERS if f not in ('dlib', 'googletest')])
    problem, unchecked = check_local_sources(source, deps, UNPINNED)
    assert problem.level == 'error' and '2 of the 6 dependencies' in problem.what
    assert f'{deps / "dlib"}/  <- https://github.com/davisking/dlib/archive/refs/tags/' \
           'v19.24.7.zip (the extracted archive, sha1 6c63)' in problem.fix
    assert 'googletest' in problem.fix and 'pybind11/' not in problem.fix
    assert f'$ curl -fL -o /tmp/dlib.zip https://github.com/davisking/dlib/archive/refs/tags/' \
           f'v19.24.7.zip && unzip -qo /tmp/dlib.zip -d {deps}/dlib.tmp && mv -T ' \
           f'{deps}/dlib.tmp/* {deps}/dlib && rmdir {deps}/dlib.tmp' in problem.fix
    assert unchecked.level == 'warning' and 'only the existence of pybind11, ' \
        'onnxruntime_extensions, gsl, nlohmann_json' in unchecked.what
    (unchecked,) = check_local_sources(source, deps_folder(tmp_path / 'all'), UNPINNED)
    assert unchecked.level == 'warning' and 'was checked, not their version' in unchecked.what


def test_without_the_extensions_folder_its_own_dependencies_are_not_known_yet(tmp_path):
    source = genai_tree(tmp_path / 'src')
    (problem,) = check_local_sources(source, tmp_path / 'empty', UNPINNED)
    assert '3 of the 3' in problem.what
    assert 'a checkout of commit 9f1f67d6' in problem.fix
    assert f'$ git clone https://github.com/microsoft/onnxruntime-extensions.git ' \
           f'{tmp_path}/empty/onnxruntime_extensions && git -C {tmp_path}/empty/' \
           'onnxruntime_extensions checkout 9f1f67d6' in problem.fix
    assert 'the dependencies of onnxruntime-extensions are listed once ' \
           f'{tmp_path}/empty/onnxruntime_extensions is there' in problem.fix


def test_a_source_tree_of_another_release_is_refused(tmp_path):
    source = genai_tree(tmp_path / 'src', version='0.11.4')
    (problem,) = check_local_sources(source, None, '0.9.2')
    assert 'is onnxruntime-genai 0.11.4 (its VERSION_INFO), not 0.9.2' in problem.what
    assert '--genai-version 0.11.4' in problem.what
    (problem,) = check_local_sources(tmp_path, None, '0.9.2')
    assert 'is not an onnxruntime-genai source tree' in problem.what
    (source / 'VERSION_INFO').unlink()
    (problem,) = check_local_sources(source, None, '0.9.2')
    assert 'has no VERSION_INFO' in problem.what and 'None' not in problem.what


# ---------------------------------------------------------------------------------- cuda_libs

def toolkit(root, headers=(), libs=()):
    root = Path(root)
    (root / 'include').mkdir(parents=True)
    (root / 'lib64').mkdir()
    for header in headers:
        (root / 'include' / header).write_text('')
    for lib in libs:
        (root / 'lib64' / f'lib{lib}.so').write_text('')
    return root


def nvidia_package(site, layout='cu13'):
    """Write the NVIDIA pip packages as CUDA 13 lays them out (one cu13/ folder) or as CUDA 12."""
    files = {'cu13': {'include': ('curand_kernel.h', 'curand.h', 'cublas_v2.h', 'cublas_api.h',
                                  'cufft.h', 'cudalibxt.h', 'cuda_runtime.h'),
                      'lib': ('libcublas.so.13', 'libcublasLt.so.13', 'libcurand.so.10',
                              'libcufft.so.12')},
             'cublas': {'include': ('cublas_v2.h', 'cublas_api.h'),
                        'lib': ('libcublas.so.12', 'libcublasLt.so.12')},
             'curand': {'include': ('curand_kernel.h', 'curand.h'), 'lib': ('libcurand.so.10',)},
             'cufft': {'include': ('cufft.h', 'cudalibxt.h'), 'lib': ('libcufft.so.11',)}}
    for folder in (('cu13',) if layout == 'cu13' else ('cublas', 'curand', 'cufft')):
        base = Path(site) / 'nvidia' / folder
        for kind, names in files[folder].items():
            (base / kind).mkdir(parents=True)
            for name in names:
                (base / kind / name).write_text(f'// {folder}/{name}\n')
    return Path(site)


def test_a_compiler_only_toolkit_lacks_the_libraries_and_pip_has_them(tmp_path):
    cuda = toolkit(tmp_path / 'cuda', libs=['cudart'])
    missing = cuda_libs.toolkit_missing(cuda)
    assert missing == ['curand_kernel.h', 'cublas_v2.h', 'cufft.h', 'libcublasLt.so',
                       'libcublas.so', 'libcurand.so', 'libcufft.so']
    assert cuda_libs.pip_packages_for(missing, 13) == ['nvidia-cublas', 'nvidia-cufft',
                                                       'nvidia-curand']
    site = nvidia_package(tmp_path / 'site')
    dest = tmp_path / 'extra'
    taken = cuda_libs.gather(cuda_libs.nvidia_folders([site], 13), dest, cuda, 13)
    assert (dest / 'lib' / 'libcublas.so').resolve() == (site / 'nvidia/cu13/lib/libcublas.so.13')
    assert (dest / 'lib' / 'libcurand.so').resolve().name == 'libcurand.so.10'
    assert set(taken) >= {'libcublasLt.so', 'libcufft.so', 'curand_kernel.h'}
    # the toolkit's own headers are not shadowed by the pip package's
    assert not (dest / 'include' / 'cuda_runtime.h').exists()
    assert (dest / 'include' / 'curand.h').exists() and (dest / 'include' / 'cudalibxt.h').exists()


def test_only_the_packages_of_the_toolkits_cuda_major_are_taken(tmp_path):
    cuda = toolkit(tmp_path / 'cuda', libs=['cudart'])
    assert cuda_libs.pip_packages_for(cuda_libs.toolkit_missing(cuda), 12) == [
        'nvidia-cublas-cu12', 'nvidia-cufft-cu12', 'nvidia-curand-cu12']
    site = nvidia_package(nvidia_package(tmp_path / 'site', 'cu13'), 'cu12')
    for major, folders, cublas, cufft in ((12, ['cublas', 'cufft', 'curand'], 'libcublas.so.12',
                                           'libcufft.so.11'),
                                          (13, ['cu13'], 'libcublas.so.13', 'libcufft.so.12')):
        found = cuda_libs.nvidia_folders([site], major)
        assert [f.name for f in found] == folders
        dest = tmp_path / f'extra{major}'
        cuda_libs.gather(found, dest, cuda, major)
        assert (dest / 'lib' / 'libcublas.so').resolve().name == cublas
        assert (dest / 'lib' / 'libcufft.so').resolve().name == cufft
        assert (dest / 'include' / 'cublas_v2.h').read_text().startswith(
            '// cu13/' if major == 13 else '// cublas/')


def test_links_left_by_an_earlier_run_are_replaced(tmp_path):
    cuda = toolkit(tmp_path / 'cuda', libs=['cudart'])
    dest = tmp_path / 'extra'
    (dest / 'lib').mkdir(parents=True)
    (dest / 'lib' / 'libcublas.so').symlink_to(tmp_path / 'gone' / 'libcublas.so.13')
    site = nvidia_package(tmp_path / 'site')
    for _ in range(2):      # the step runs on every build
        cuda_libs.gather(cuda_libs.nvidia_folders([site], 13), dest, cuda, 13)
    assert (dest / 'lib' / 'libcublas.so').resolve() == site / 'nvidia/cu13/lib/libcublas.so.13'


def test_a_complete_toolkit_needs_nothing_from_pip(tmp_path):
    cuda = toolkit(tmp_path / 'cuda', headers=cuda_libs.HEADERS, libs=cuda_libs.LIBRARIES)
    assert cuda_libs.toolkit_missing(cuda) == []
    assert cuda_libs.gather([], tmp_path / 'extra', cuda, 12) == {}


def test_what_neither_has_is_named_with_its_package(tmp_path):
    cuda = toolkit(tmp_path / 'cuda', headers=cuda_libs.HEADERS,
                   libs=[lib for lib in cuda_libs.LIBRARIES if lib != 'cufft'])
    with pytest.raises(cuda_libs.CudaLibsError, match='lacks libcufft.so .*pip install '
                                                      'nvidia-cufft-cu12'):
        cuda_libs.gather([], tmp_path / 'extra', cuda, 12)


# ------------------------------------------------------------------------------------- checks

def test_a_toolkit_without_the_libraries_is_an_error_unless_pip_provides_them():
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    plat.cuda_missing = ['curand_kernel.h', 'libcurand.so']
    choice = V.choose_versions('1.22.0')
    (problem,) = [p for p in check_prerequisites(plat, choice, None, install=False)
                  if 'lacks curand_kernel.h' in p.what]
    assert problem.level == 'error' and 'nvidia-jetpack' in problem.fix
    (problem,) = [p for p in check_prerequisites(plat, choice, None, install=False,
                                                 non_jetson=True)
                  if 'lacks curand_kernel.h' in p.what]
    assert '--cuda-libs python' in problem.fix and 'nvidia-curand' in problem.fix
    # a --target preset: the target's Python is not here to look into
    (problem,) = [p for p in check_prerequisites(plat, choice, None, install=False,
                                                 cuda_libs='python')
                  if 'lacks curand_kernel.h' in p.what]
    assert problem.level == 'warning' and 'cannot be checked from here' in problem.what
    assert problem.fix == f'on the target: {plat.python.path} -m pip install nvidia-curand-cu12'


def fake_python(path, site=None):
    """Write an interpreter that answers the nvidia package lookup: from ``site``, or none."""
    answer = f'echo {site}/nvidia' if site else 'echo "No module named nvidia" >&2; exit 1'
    path.write_text(f'#!/bin/sh\n{answer}\n')
    path.chmod(0o755)
    return str(path)


def test_cuda_libs_python_without_the_nvidia_packages_is_an_error_with_the_pip_command(
        tmp_path):
    plat = preset_platform('jp6-orin')
    plat.synthetic, plat.cmake = False, '3.28.3'
    plat.cuda_missing = ['curand_kernel.h', 'cublas_v2.h', 'libcublas.so', 'libcurand.so']
    plat.python.path = fake_python(tmp_path / 'python3')
    choice = V.choose_versions('1.22.0')

    def lacking(problems):
        return [p for p in problems if 'lacks curand_kernel.h' in p.what]

    (problem,) = lacking(check_prerequisites(plat, choice, None, install=False,
                                             cuda_libs='python'))
    assert problem.level == 'error' and 'the build would stop' in problem.what
    assert problem.fix == f'{plat.python.path} -m pip install nvidia-cublas-cu12 ' \
                          'nvidia-curand-cu12'
    # a CUDA 13 cuRAND does not count for a CUDA 12 toolkit; the CUDA 12 packages do
    site = nvidia_package(tmp_path / 'site', 'cu13')
    plat.python.path = fake_python(tmp_path / 'python3', site)
    (problem,) = lacking(check_prerequisites(plat, choice, None, install=False,
                                             cuda_libs='python'))
    assert problem.level == 'error'
    nvidia_package(site, 'cu12')
    assert lacking(check_prerequisites(plat, choice, None, install=False,
                                       cuda_libs='python')) == []
    # a Python that cannot be started cannot be asked: said, not an error
    plat.python.path = str(tmp_path / 'no-such-python')
    (problem,) = lacking(check_prerequisites(plat, choice, None, install=False,
                                             cuda_libs='python'))
    assert problem.level == 'warning' and 'cannot be checked from here' in problem.what


def test_build_py_needs_requests_and_an_offline_wheel_needs_setuptools():
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    plat.python.modules = ['numpy', 'onnx', 'tokenizers', 'cv2']
    choice = V.choose_versions('1.22.0')
    problems = check_prerequisites(plat, choice, None, install=False, offline=True)
    (requests,) = [p for p in problems if 'lacks requests' in p.what]
    assert requests.fix.startswith(f'{plat.python.path} -m pip install requests')
    (wheel,) = [p for p in problems if 'setuptools and wheel' in p.what]
    assert wheel.level == 'error' and 'pip install setuptools wheel' in wheel.fix
    plat.python.modules += ['requests', 'setuptools', 'wheel']
    assert not [p for p in check_prerequisites(plat, choice, None, install=False, offline=True)
                if 'lacks' in p.what]


def test_requests_is_installed_with_pip_and_with_apt_only_for_the_system_python():
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    plat.python.modules = ['numpy', 'onnx', 'tokenizers', 'cv2', 'setuptools', 'wheel']
    choice = V.choose_versions('1.22.0')

    def fix():
        (requests,) = [p for p in check_prerequisites(plat, choice, None, install=False)
                       if 'lacks requests' in p.what]
        return requests.fix

    plat.python.path, plat.python.in_venv = '/usr/bin/python3', False
    assert fix() == ('/usr/bin/python3 -m pip install requests (or, as it is the system '
                     'Python, sudo apt install python3-requests)')
    plat.python.path, plat.python.in_venv = '/home/me/venv/bin/python3', True
    assert fix() == '/home/me/venv/bin/python3 -m pip install requests'


def test_non_jetson_skips_the_jetson_only_errors():
    plat = preset_platform('jp6-orin')
    plat.synthetic, plat.is_jetson, plat.machine, plat.jetpack = False, False, 'x86_64', None
    plat.cmake = '3.28.3'
    choice = V.choose_versions('1.22.0')
    as_jetson = check_prerequisites(plat, choice, None, install=False)
    assert any('not a Jetson' in p.what for p in as_jetson)
    problems = check_prerequisites(plat, choice, None, install=False, non_jetson=True)
    assert not any('Jetson' in p.what for p in problems)
    (ort,) = [p for p in problems if 'no ONNX Runtime GPU libraries' in p.what]
    assert 'pip install onnxruntime-gpu==1.22.0 (PyPI' in ort.fix


# ------------------------------------------------------------------------------------- plan

def test_the_offline_plan_uses_the_folders_and_never_clones(tmp_path):
    source, deps = genai_tree(tmp_path / 'src'), deps_folder(tmp_path / 'deps')
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    choice = V.choose_versions('1.22.0')
    opts = Options(work_root=tmp_path / 'w', source=source, deps_dir=deps, cuda_libs='python')
    plan = make_plan(plat, choice, None, opts)
    ids = [s.id for s in plan.steps]
    assert 'clone' not in ids and ids.index('source') < ids.index('deps') < ids.index('build')
    build = plan.steps[ids.index('build')]
    assert build.cwd == str(source.resolve())
    assert 'FETCHCONTENT_FULLY_DISCONNECTED=ON' in build.argv
    assert f'FETCHCONTENT_SOURCE_DIR_DLIB={deps.resolve() / "dlib"}' in build.argv
    assert build.env['PIP_NO_INDEX'] == '1' and build.env['PIP_NO_BUILD_ISOLATION'] == '0'
    extra = plan.work_dir / 'cuda-libs'
    assert build.env['CPATH'] == f'{extra}/include:$CPATH'
    assert build.env['LIBRARY_PATH'] == f'{extra}/lib:$LIBRARY_PATH'
    assert ids.index('cuda-libs') < ids.index('build')


def test_install_cmake_in_a_venv_uses_the_venvs_cmake(tmp_path):
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.22.1'
    plat.python.path, plat.python.in_venv = '/home/me/venv/bin/python3', True
    plan = make_plan(plat, V.choose_versions('1.22.0'), None,
                     Options(work_root=tmp_path, install_cmake=True))
    (build,) = [s for s in plan.steps if s.id == 'build']
    assert build.argv[build.argv.index('--cmake_path') + 1] == '/home/me/venv/bin/cmake'


# ------------------------------------------------------------------------------------- main()

def desktop(tmp_path, modules=('numpy', 'onnx', 'tokenizers', 'cv2', 'requests', 'setuptools',
                               'wheel')):
    probe, _ = make_probe('x86-desktop', tmp_path, machine='x86_64', answers={
        'python3': (0, python_probe_json(version='3.12.3', modules=modules)),
        'cmake': (0, 'cmake version 3.31.6\n')})
    return probe


def run(argv, probe, context=None):
    lines = []
    status = tool.main(argv, probe=probe, out=lines.append, context=context)
    return status, '\n'.join(lines)


def test_deps_dir_needs_the_source(tmp_path):
    status, text = run(['--non-jetson', '--deps-dir', str(tmp_path)], desktop(tmp_path))
    assert status == 2 and '--deps-dir (an offline build) needs --source' in text


@pytest.mark.parametrize('value, accepted', [('90', '90'), ('8.7', '87'), ('sm_87', '87'),
                                             ('110', '110'), ('86;89', None), ('x', None)])
def test_cuda_arch_is_one_compute_capability(value, accepted, capsys):
    if accepted:
        assert tool.build_parser().parse_args(['--cuda-arch', value]).cuda_arch == accepted
        return
    with pytest.raises(SystemExit) as stopped:
        tool.build_parser().parse_args(['--cuda-arch', value])
    assert stopped.value.code == 2 and 'is not one compute capability' in capsys.readouterr().err


def test_prebuilt_sha256_must_be_a_sha256(capsys):
    digest = 'AB' * 32
    assert tool.build_parser().parse_args(['--prebuilt-sha256', digest]).prebuilt_sha256 == \
        digest.lower()
    with pytest.raises(SystemExit):
        tool.build_parser().parse_args(['--prebuilt-sha256', 'abc'])
    assert 'is not a sha256' in capsys.readouterr().err


def test_a_desktop_builds_for_its_own_gpu_offline(tmp_path):
    """A real run of every step on an x86_64 desktop, with build.py and pip faked."""
    source, deps = genai_tree(tmp_path / 'src'), deps_folder(tmp_path / 'deps')
    ort = fake_ort_release(tmp_path / 'ort-rel')
    argv = ['--non-jetson', '--cuda-arch', '89', '--source', str(source), '--deps-dir',
            str(deps), '--ort-source', str(ort), '--work-dir', str(tmp_path / 'w'),
            '--genai-version', UNPINNED]
    status, text = run(['--dry-run'] + argv, desktop(tmp_path / 'a'))
    assert status == 0 and 'This machine is not a Jetson' not in text, text
    assert 'ERROR' not in text
    assert 'CMAKE_CUDA_ARCHITECTURES=89' in text and 'git clone' not in text
    machine, lines = FakeMachine(), []
    status, _ = run(argv, desktop(tmp_path / 'b'),
                    Context(out=lines.append, run=machine.run, capture=machine.capture))
    text = '\n'.join(lines)
    assert status == 0, text
    (build,) = [c for c in machine.calls if len(c) > 1 and c[1].endswith('build.py')]
    assert build[1] == str(source.resolve() / 'build.py')
    assert f'FETCHCONTENT_SOURCE_DIR_GOOGLETEST={deps.resolve() / "googletest"}' in build
    assert '6 dependencies, all in' in text and 'not a git checkout' in text
    assert not [c for c in machine.calls if c[:2] == ['git', 'clone']]
    assert list((tmp_path / 'w').glob('*/dist/onnxruntime_genai_cuda-*.whl'))


def test_a_desktop_run_stops_on_a_missing_dependency_before_building(tmp_path):
    source = genai_tree(tmp_path / 'src')
    deps = deps_folder(tmp_path / 'deps', ['pybind11', 'onnxruntime_extensions'])
    ort = fake_ort_release(tmp_path / 'ort-rel')
    machine, lines = FakeMachine(), []
    status, text = run(['--non-jetson', '--cuda-arch', '89', '--source', str(source),
                        '--deps-dir', str(deps), '--ort-source', str(ort), '--work-dir',
                        str(tmp_path / 'w'), '--genai-version', UNPINNED],
                       desktop(tmp_path / 'a'),
                       Context(out=lines.append, run=machine.run, capture=machine.capture))
    assert status == 1 and not machine.calls
    assert 'googletest/  <- https://github.com/google/googletest/archive/530d.zip' in text
