"""Platform detection of build_genai_wheel against fixture trees and scripted command output."""
import os

from phi3v_ros.tools.genai_wheel import platform as P
from phi3v_ros.tools.genai_wheel.platform import detect, GIB
import pytest
from test_build_genai_wheel_fakes import make_probe, python_probe_json

ORT_GPU = {'version': '1.22.0', 'providers': ['TensorrtExecutionProvider', 'CUDAExecutionProvider',
                                              'CPUExecutionProvider'],
           'capi_dir': '/usr/local/lib/python3.10/dist-packages/onnxruntime/capi'}


@pytest.mark.parametrize('text, expected', [
    ('# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, '
     'DATE: Wed Jan  8', '36.4.3'),
    ('# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64', '36.4.0'),
    ('# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64', '35.4.1'),
    ('# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref', '32.7.1'),
    ('# R38 (release), REVISION: 2, GCID: 1, BOARD: generic', '38.2.0'),
    ('garbage', None),
    ('', None),
])
def test_parse_nv_tegra_release_layouts(text, expected):
    assert P.parse_nv_tegra_release(text) == expected


def test_parse_cuda_version_json_txt_and_nvcc():
    assert P.parse_cuda_version('{"cuda": {"version": "12.6.68"}}', None) == '12.6.68'
    assert P.parse_cuda_version(None, 'CUDA Version 10.2.300\n') == '10.2.300'
    assert P.parse_cuda_version('not json', 'CUDA Version 11.4.315') == '11.4.315'
    assert P.parse_cuda_version(None, None) is None
    assert P.parse_nvcc_version('Cuda compilation tools, release 12.6, V12.6.68\n') == '12.6.68'


def test_parse_tool_versions():
    assert P.parse_first_version('gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0') == '11.4.0'
    assert P.parse_first_version('gcc (Ubuntu 9.4.0-1ubuntu1~20.04.2) 9.4.0') == '9.4.0'
    assert P.parse_first_version('cmake version 3.22.1') == '3.22.1'


def test_jetson_orin_jetpack_62(tmp_path):
    probe, _ = make_probe('orin-jp62', tmp_path,
                          answers={'python3': (0, python_probe_json(ort=ORT_GPU))},
                          env={'ROS_DISTRO': 'humble'})
    plat = detect(probe, work_dir='/home/jetson/.cache')
    assert plat.is_jetson and plat.machine == 'aarch64'
    assert plat.l4t == '36.4.3'
    assert plat.jetpack.jetpack == '6.2' and plat.jetpack.cuda == '12.6'
    assert plat.jetpack_major == 6
    assert plat.ubuntu == '22.04'
    assert plat.board == 'NVIDIA Jetson AGX Orin Developer Kit'
    assert (plat.soc, plat.compute_capability) == ('tegra234', '87')
    installs = [(c.path, c.version) for c in plat.cuda_installs]
    assert installs == [('/usr/local/cuda-12.6', '12.6.68')]
    assert plat.cuda.path == '/usr/local/cuda-12.6'
    assert plat.python.path == '/usr/bin/python3'
    assert 'ros2' in plat.python.source and plat.ros_distro == 'humble'
    assert plat.python.version == '3.10.12' and plat.python.has_dev_headers
    assert plat.ort_runtime.version == '1.22.0' and plat.ort_runtime.has_cuda
    assert plat.gcc == '11.4.0' and plat.cmake == '3.22.1' and plat.cmake_path == '/usr/bin/cmake'
    assert plat.git == '/usr/bin/git' and plat.docker is None
    assert plat.mem_total == 64335836 * 1024 and plat.mem_available == 58720256 * 1024
    assert plat.cudnn_majors == [9]
    text = '\n'.join(plat.summary())
    assert ('JetPack 6.2 (L4T R36.4.3)' in text and 'sm_87' in text
            and '12.6.68 at /usr/local/cuda-12.6' in text)


def test_ros_distro_found_without_sourcing(tmp_path):
    probe, _ = make_probe('orin-jp62', tmp_path)
    plat = detect(probe)
    assert plat.ros_distro == 'humble'
    assert plat.python.source == 'the interpreter of /opt/ros/humble/bin/ros2'


def test_two_cuda_installs_follow_the_cuda_link(tmp_path):
    probe, _ = make_probe('orin-nano-jp60-two-cuda', tmp_path)
    os.symlink('cuda-12.2', probe.path('/usr/local/cuda'))
    plat = detect(probe)
    assert plat.jetpack.jetpack == '6.0' and plat.l4t == '36.3.0'
    assert [c.version for c in plat.cuda_installs] == ['12.2.140', '12.6.77']
    assert plat.cuda.path == '/usr/local/cuda-12.2'
    assert 'points to it' in plat.cuda_reason
    assert plat.board == 'NVIDIA Jetson Orin Nano Developer Kit'
    assert plat.mem_available == 5452596 * 1024 and plat.swap_free == 3901436 * 1024


def test_two_cuda_installs_without_link_take_cuda_path_then_newest(tmp_path):
    probe, _ = make_probe('orin-nano-jp60-two-cuda', tmp_path,
                          env={'CUDA_PATH': '/usr/local/cuda-12.2'})
    assert detect(probe).cuda.path == '/usr/local/cuda-12.2'
    probe, _ = make_probe('orin-nano-jp60-two-cuda', tmp_path / 'b')
    plat = detect(probe)
    assert plat.cuda.path == '/usr/local/cuda-12.6' and plat.cuda_reason == 'the newest installed'
    plat = detect(probe, cuda_home='/usr/local/cuda-12.2')
    assert plat.cuda.path == '/usr/local/cuda-12.2' and plat.cuda_reason == '--cuda-home'


def test_cuda_home_that_is_not_a_toolkit(tmp_path):
    probe, _ = make_probe('orin-jp62', tmp_path)
    plat = detect(probe, cuda_home='/opt/nothing')
    assert (plat.cuda is None
            and '--cuda-home /opt/nothing is not a CUDA toolkit' in plat.cuda_reason)


def test_xavier_jetpack_5(tmp_path):
    probe, _ = make_probe('xavier-jp512', tmp_path, answers={
        'gcc': (0, 'gcc (Ubuntu 9.4.0-1ubuntu1~20.04.2) 9.4.0\n'),
        'python3': (0, python_probe_json(version='3.8.10'))})
    plat = detect(probe)
    assert plat.l4t == '35.4.1' and plat.jetpack.jetpack == '5.1.2' and plat.jetpack_major == 5
    assert plat.compute_capability == '72' and plat.soc == 'tegra194'
    assert plat.cuda.version == '11.4.19'
    assert plat.gcc == '9.4.0' and plat.python.version == '3.8.10'
    assert plat.ort_runtime is None and 'onnxruntime' in plat.ort_runtime_error


def test_old_nano_with_version_txt(tmp_path):
    probe, _ = make_probe('nano-jp461', tmp_path)
    plat = detect(probe)
    assert plat.l4t == '32.7.1' and plat.jetpack.jetpack == '4.x'
    assert plat.cuda.version == '10.2.300' and plat.compute_capability == '53'


def test_no_cuda_and_l4t_from_dpkg_status(tmp_path):
    probe, _ = make_probe('orin-jp61-no-cuda-dpkg-only', tmp_path)
    plat = detect(probe)
    assert plat.l4t == '36.4.0' and plat.jetpack.jetpack == '6.1'
    assert plat.cuda_installs == [] and plat.cuda is None
    assert plat.compute_capability == '87'
    assert 'none found' in '\n'.join(plat.summary())


def test_desktop_is_not_a_jetson(tmp_path):
    probe, _ = make_probe('x86-desktop', tmp_path, machine='x86_64', answers={
        'nvidia-smi': (0, '8.9\n')})
    plat = detect(probe)
    assert not plat.is_jetson and plat.l4t is None and plat.jetpack is None
    assert plat.compute_capability == '89' and plat.cc_source == 'nvidia-smi'
    assert plat.cuda.version == '12.4.131'


def test_cuda_arch_override_and_unknown_gpu(tmp_path):
    probe, _ = make_probe('x86-desktop', tmp_path, machine='x86_64')
    assert detect(probe).compute_capability is None
    assert detect(probe, cuda_arch='8.7').compute_capability == '87'


def test_python_that_does_not_run(tmp_path):
    probe, _ = make_probe('orin-jp62', tmp_path, answers={'python3': (1, '')})
    plat = detect(probe)
    assert plat.python.error and plat.python.version is None


def test_version_from_nvcc_when_no_version_file(tmp_path):
    probe, commands = make_probe('orin-jp62', tmp_path, answers={
        '/usr/local/cuda-12.6/bin/nvcc': (0, 'Cuda compilation tools, release 12.6, V12.6.85\n')})
    (probe.path('/usr/local/cuda-12.6') / 'version.json').unlink()
    plat = detect(probe)
    assert plat.cuda.version == '12.6.85'
    assert ['/usr/local/cuda-12.6/bin/nvcc', '--version'] in commands.calls


@pytest.mark.parametrize('name', sorted(P.PRESETS))
def test_presets_describe_a_jetson(name):
    plat = P.preset_platform(name)
    assert plat.synthetic and plat.is_jetson and plat.machine == 'aarch64'
    assert plat.cuda and plat.compute_capability and plat.python.version and plat.jetpack
    assert plat.ort_runtime.has_cuda


def test_preset_memory_of_orin_nano():
    plat = P.preset_platform('jp6-orin-nano')
    assert plat.mem_total == 8 * GIB and plat.compute_capability == '87'
