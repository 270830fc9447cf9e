"""The version table, version selection and the prerequisite checks of build_genai_wheel."""
from pathlib import Path
import re

from phi3v_ros.tools.genai_wheel import versions as V
from phi3v_ros.tools.genai_wheel.checks import check_prerequisites, has_errors
from phi3v_ros.tools.genai_wheel.ort_libs import OrtSource
from phi3v_ros.tools.genai_wheel.platform import GIB, preset_platform
import pytest


def test_table_is_sorted_and_pinned():
    versions = [V.parse_version(r.version) for r in V.GENAI_RELEASES]
    assert versions == sorted(versions)
    min_orts = [V.parse_version(r.min_ort) for r in V.GENAI_RELEASES]
    assert min_orts == sorted(min_orts), \
        'newer onnxruntime-genai never needs an older ONNX Runtime'
    for release in V.GENAI_RELEASES:
        assert release.commit is None or re.fullmatch(r'[0-9a-f]{40}', release.commit)
    for sha in V.ORT_SOURCE_ARCHIVES.values():
        assert re.fullmatch(r'[0-9a-f]{64}', sha)


def test_default_pair():
    release = V.default_release()
    assert (release.version, release.min_ort) == (V.DEFAULT_GENAI, V.DEFAULT_ORT) \
        == ('0.9.2', '1.22.0')
    assert release.phi3v_export == 'nov2024' and release.commit
    assert V.ort_archive_for(release.ort_api) == '1.22.2'
    assert V.ort_archive_for(release.ort_api, at_most='1.22.0') == '1.22.0'


def test_versions_and_api():
    assert V.version_at_least('1.22.0', '1.22') and not V.version_at_least('1.21.1', '1.22.0')
    assert V.version_at_least('0.16.0-dev', '0.16.0')
    assert V.ort_api_version('1.22.1') == 22
    with pytest.raises(ValueError):
        V.ort_api_version('2.0.0')


@pytest.mark.parametrize('l4t, jetpack, cuda', [
    ('36.4.3', '6.2', '12.6'), ('36.4.4', '6.2.1', '12.6'), ('36.4.0', '6.1', '12.6'),
    ('36.3.0', '6.0', '12.2'), ('36.2.0', '6.0 DP', '12.2'), ('36.9.9', '6.x', '12.6'),
    ('35.4.1', '5.1.2', '11.4'), ('35.7.0', '5.1.x', '11.4'), ('38.2.0', '7.0', '13.0'),
    ('32.7.1', '4.x', '10.2'),
])
def test_jetpack_table(l4t, jetpack, cuda):
    release = V.jetpack_for_l4t(l4t)
    assert (release.jetpack, release.cuda) == (jetpack, cuda)


def test_unknown_l4t():
    assert V.jetpack_for_l4t(None) is None and V.jetpack_for_l4t('99.1') is None


def test_choose_default_and_newer_ort():
    choice = V.choose_versions()
    assert (choice.genai.version, choice.ort) == ('0.9.2', '1.22.0') and 'default' in choice.reason
    choice = V.choose_versions(found_ort='1.23.0')
    assert (choice.genai.version, choice.ort) == ('0.9.2', '1.23.0')


def test_choose_newest_release_for_an_older_ort():
    choice = V.choose_versions(found_ort='1.21.1')
    assert choice.genai.version == '0.7.1' and choice.ort == '1.21.1'
    assert V.choose_versions(found_ort='1.20.2').genai.version == '0.6.0'


def test_ort_older_than_any_supported_release():
    with pytest.raises(V.VersionError, match='older than every supported'):
        V.choose_versions(found_ort='1.17.0')


def test_explicit_genai_needs_newer_ort():
    with pytest.raises(V.VersionError,
                       match=r'needs the C API of ONNX Runtime 1\.24\.1.*newest for 1\.22\.0 is '
                             r'0\.9\.2'):
        V.choose_versions(found_ort='1.22.0', genai='0.12')
    choice = V.choose_versions(genai='0.12', ort='1.24.1')
    assert choice.genai.version == '0.12.2' and choice.reason == '--genai-version 0.12'


def test_genai_without_pinned_commit():
    with pytest.raises(V.VersionError, match='--genai-commit'):
        V.choose_versions(genai='0.18.0', ort='1.31.0')
    choice = V.choose_versions(genai='0.18.0', ort='1.31.0', genai_commit='a' * 40)
    assert choice.genai.commit == 'a' * 40 and choice.genai.min_ort == '1.31.0'
    with pytest.raises(V.VersionError, match='not in the version table'):
        V.choose_versions(genai='0.99.0')
    choice = V.choose_versions(genai='0.99.0', ort='1.40.0', genai_commit='b' * 40)
    assert choice.genai.min_ort == '1.40.0'


def test_release_older_than_supported():
    with pytest.raises(V.VersionError, match='May-2024'):
        V.choose_versions(genai='0.4.0', ort='1.19.2')


def test_table_rows_for_docs():
    rows = V.table_rows()
    assert rows[0][:2] == ('0.4.0', '1.19.0') and 'May-2024' in rows[0][4]
    assert ('0.9.2', '1.22.0', '22', '3.28') == rows[5][:4]


# ------------------------------------------------------------------------------------------ checks

def gpu_source(version='1.22.0', cuda_major=12, cudnn_major=9, provider=True, header_api=None):
    libs = [f'libonnxruntime.so.{version}']
    libs += ['libonnxruntime_providers_cuda.so'] if provider else []
    return OrtSource('python', f'onnxruntime-gpu {version}', lib_dir=Path('/x/capi'),
                     version=version, main_lib=libs[0], libs=libs, cuda_major=cuda_major,
                     cudnn_major=cudnn_major,
                     header_api=header_api, header_dir=Path('/x/include') if header_api else None)


def errors_of(problems):
    return [p.what for p in problems if p.level == 'error']


def test_a_ready_jetpack_6_has_no_errors():
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    problems = check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(), install=True)
    assert not has_errors(problems), problems


def test_cmake_too_old_offers_pip():
    plat = preset_platform('jp6-orin')
    problems = check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(), install=False)
    (problem,) = [p for p in problems if 'CMake' in p.what]
    assert problem.level == 'error' and 'needs CMake 3.28' in problem.what
    assert ("pip install --user 'cmake>=3.28,<4'" in problem.fix
            and '--install-cmake' in problem.fix)
    problems = check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(), install=False,
                                   install_cmake=True)
    assert [p.level for p in problems if 'CMake' in p.what] == ['warning']


def test_jetpack_5_gcc_cuda_and_python():
    plat = preset_platform('jp5-xavier')
    problems = check_prerequisites(plat, V.choose_versions('1.22.0'),
                                   gpu_source(cuda_major=11, cudnn_major=8), install=False)
    errors = errors_of(problems)
    assert not any('GCC' in e for e in errors), errors   # 0.9.2's CUDA build is C++17
    assert any('CUDA 11.4.315' in e and 'too old' in e for e in errors)
    assert any('JetPack 5.1.2' in p.what for p in problems)


@pytest.mark.parametrize('genai, standard, gcc', [('0.5.2', 17, '9'), ('0.9.2', 17, '9'),
                                                  ('0.11.4', 17, '9'), ('0.12.2', 20, '10'),
                                                  ('0.13.2', 20, '10'), ('0.15.2', 20, '10')])
def test_the_gcc_needed_follows_the_releases_cuda_cxx_standard(genai, standard, gcc):
    # cmake/cxx_standard.cmake of each tag: USE_CUDA selected C++17 up to 0.11, not from 0.12 on
    release = V.find_release(genai)
    assert (release.cuda_cxx_standard, release.min_gcc) == (standard, gcc)
    plat = preset_platform('jp5-xavier')      # GCC 9.4.0
    choice = V.choose_versions('1.31.0', genai=genai)
    problems = check_prerequisites(plat, choice, gpu_source(), install=False)
    gcc_errors = [e for e in errors_of(problems) if 'GCC' in e]
    if standard == 17:
        assert gcc_errors == []
    else:
        assert gcc_errors and f'onnxruntime-genai {genai} is C++20 and needs GCC 10' in \
            gcc_errors[0]


def test_no_cuda_and_no_gpu():
    plat = preset_platform('jp6-orin')
    plat.cuda, plat.cuda_installs, plat.cuda_reason = None, [], 'no CUDA toolkit found'
    plat.compute_capability = None
    problems = check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(), install=False)
    fixes = {p.what: p.fix for p in problems if p.level == 'error'}
    assert any('no CUDA toolkit' in w and 'nvidia-jetpack' in f for w, f in fixes.items())
    assert any('compute capability' in w and '--cuda-arch 87' in f for w, f in fixes.items())


def test_too_little_disk_and_memory():
    plat = preset_platform('jp6-orin-nano')
    plat.disk_free = 3 * GIB
    plat.mem_available = 2 * GIB
    problems = check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(), install=False)
    assert any('3.0 GiB free' in e and '8 GiB' in e for e in errors_of(problems))
    assert any(p.level == 'warning' and 'memory' in p.what for p in problems)


def test_several_cuda_installs_are_reported():
    plat = preset_platform('jp60-orin')
    problems = check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(), install=False)
    assert any(p.level == 'warning' and '2 CUDA toolkits' in p.what and 'CUDA_PATH' in p.fix
               for p in problems)


def test_ort_problems():
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    choice = V.choose_versions('1.22.0')
    problems = check_prerequisites(plat, choice, None, install=False)
    assert any('no ONNX Runtime GPU libraries' in e and 'jetson-ai-lab' in
               next(p.fix for p in problems if p.what == e)
               for e in errors_of(check_prerequisites(plat, choice, None, install=False)))
    errors = errors_of(check_prerequisites(plat, choice, gpu_source(provider=False),
                                           install=False))
    assert any('no libonnxruntime_providers_cuda.so' in e for e in errors)
    errors = errors_of(check_prerequisites(plat, choice, gpu_source(version='1.20.1'),
                                           install=False))
    assert any('has C API 20, older than the 22' in e for e in errors)
    errors = errors_of(check_prerequisites(plat, choice, gpu_source(header_api=21), install=False))
    assert any('headers' in e and 'C API 21' in e for e in errors)
    errors = errors_of(check_prerequisites(plat, choice, gpu_source(cuda_major=11), install=False))
    assert any('built for CUDA 11' in e for e in errors)
    errors = errors_of(check_prerequisites(plat, choice, gpu_source(cudnn_major=8), install=False))
    assert any('needs cuDNN 8' in e for e in errors)
    errors = errors_of(check_prerequisites(plat, choice, gpu_source(), install=False,
                                           ort_headers_available=False))
    assert any('no pinned ONNX Runtime 1.22 source archive' in e for e in errors)


def test_runtime_package_is_an_error_only_when_installing():
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    plat.ort_runtime = None
    choice = V.choose_versions('1.22.0')
    levels = [p.level for p in check_prerequisites(plat, choice, gpu_source(), install=False)
              if 'no onnxruntime package' in p.what]
    assert levels == ['warning']
    levels = [p.level for p in check_prerequisites(plat, choice, gpu_source(), install=True)
              if 'no onnxruntime package' in p.what]
    assert levels == ['error']


def test_cpu_onnxruntime_shadows_gpu():
    plat = preset_platform('jp6-orin')
    plat.ort_runtime.providers = ['AzureExecutionProvider', 'CPUExecutionProvider']
    problems = check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(), install=True)
    (problem,) = [p for p in problems if 'no CUDAExecutionProvider' in p.what]
    assert (problem.level == 'error'
            and 'pip uninstall -y onnxruntime onnxruntime-gpu' in problem.fix)


def test_not_a_jetson_and_missing_tools():
    plat = preset_platform('jp6-orin')
    plat.machine, plat.is_jetson = 'x86_64', False
    plat.git, plat.gcc = None, None
    plat.python.has_dev_headers = False
    errors = errors_of(check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(),
                                           install=False))
    assert any('not a Jetson' in e for e in errors)
    assert any('git is not installed' in e for e in errors)
    assert any('no GCC' in e for e in errors)
    assert any('Python.h is missing' in e for e in errors)


def test_docker_requested_without_docker():
    plat = preset_platform('jp6-orin')
    errors = errors_of(check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(),
                                           install=False, docker_requested=True))
    assert any('docker is not installed' in e for e in errors)


def test_the_tiny_model_check_needs_onnx_and_tokenizers():
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    plat.python.modules = ['numpy', 'requests']
    choice = V.choose_versions('1.22.0')
    assert not has_errors(check_prerequisites(plat, choice, gpu_source(), install=False))
    (problem,) = [p for p in check_prerequisites(plat, choice, gpu_source(), install=True)
                  if 'lacks' in p.what and 'OpenCV' not in p.what]
    assert ('onnx, tokenizers' in problem.what
            and "pip install --user onnx tokenizers 'numpy<2'" in problem.fix)


def test_the_post_install_generation_needs_opencv():
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    plat.python.modules = ['numpy', 'onnx', 'tokenizers', 'requests']
    choice = V.choose_versions('1.22.0')
    assert not has_errors(check_prerequisites(plat, choice, gpu_source(), install=False))
    (problem,) = [p for p in check_prerequisites(plat, choice, gpu_source(), install=True)
                  if 'OpenCV' in p.what]
    assert problem.level == 'error' and 'sudo apt install python3-opencv' in problem.fix
    plat.python.modules.append('cv2')
    assert not [p for p in check_prerequisites(plat, choice, gpu_source(), install=True)
                if 'OpenCV' in p.what]


def test_jetpack_6_0_is_told_plainly_that_no_onnx_runtime_fits():
    plat = preset_platform('jp60-orin')      # CUDA 12.2, cuDNN 8
    plat.cmake = '3.28.3'
    choice = V.choose_versions('1.22.0')
    problems = check_prerequisites(plat, choice, gpu_source(cudnn_major=9), install=False)
    (problem,) = [p for p in problems if p.what.startswith('JetPack 6.0')]
    assert problem.level == 'error' and 'no onnxruntime-gpu 1.22.0 or newer' in problem.what
    assert 'upgrade the Jetson to JetPack 6.1 or 6.2' in problem.fix
    assert '--ort-source' in problem.fix
    assert [p for p in check_prerequisites(plat, choice, None, install=False)
            if p.what.startswith('JetPack 6.0') and p.level == 'error']
    # an ONNX Runtime 1.20 built for cuDNN 8 that the user gives: built against, with a warning
    choice = V.choose_versions('1.20.1', genai='0.6.0')
    problems = check_prerequisites(plat, choice, gpu_source('1.20.1', cudnn_major=8),
                                   install=False)
    assert [p.level for p in problems if p.what.startswith('JetPack 6.0')] == ['warning']
    assert not [e for e in errors_of(problems) if 'cuDNN' in e or 'JetPack' in e]
    # JetPack 6.2: nothing of the kind
    plat = preset_platform('jp6-orin')
    assert not [p for p in check_prerequisites(plat, V.choose_versions('1.22.0'), gpu_source(),
                                               install=False) if 'JetPack 6.0' in p.what]
