"""
Mistakes users make, sent to vision_qa_node running as its own process, over real DDS.

Each must end in one message that says what is wrong and what to do: a model_path one folder too
high, git-lfs pointers instead of the weights, the May-2024 folder layout, an onnxruntime-genai
that is installed but cannot load (a wheel for another JetPack), the default model folder with
provider cpu, misspelt parameter names. The onnxruntime-genai that loads the folders is the real
one; only the broken install is a stand-in package (a failing import, as a wrong wheel gives).
"""
import os
import shutil

from phi3v_test_utils import broken_genai_install, lfs_pointer_model, may2024_model
import pytest
from reliability_helpers import BASE, ERROR, NodePeer
from ros_harness import isolate_ros_domain, NodeProcess

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')

FAILING = {**BASE, 'warmup': True, 'allow_text_only': True, 'image_wait_timeout': 0.0}
TEXT_ONLY = {**BASE, 'allow_text_only': True, 'image_wait_timeout': 0.0}


@pytest.fixture(scope='module', autouse=True)
def ros_domain():
    isolate_ros_domain()


def mistakes(tiny_model, root):
    """Return name -> (node parameters, environment or None, texts the failure must contain)."""
    repository = root / 'Phi-3-vision-128k-instruct-onnx'
    model = repository / 'gpu' / 'gpu-int4-rtn-block-32'
    shutil.copytree(tiny_model, model)
    lfs = lfs_pointer_model(tiny_model, root / 'lfs_clone')
    may = may2024_model(tiny_model, root / 'Phi-3-vision-128k-instruct-onnx-cuda' /
                        'cuda-int4-rtn-block-32')
    site = broken_genai_install(root / 'site')
    broken_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    return {
        'parent': ({'model_path': str(repository)}, None,
                   ['has no genai_config.json', f'did you mean model_path:={model}?']),
        'lfs': ({'model_path': str(lfs)}, None,
                ['are git-lfs pointers', 'text.onnx, tokenizer.json', 'git lfs pull',
                 'fetch_model']),
        'may2024': ({'model_path': str(may)}, None,
                    ['May-2024 Phi-3-vision export', 'only 0.4 (and 0.3) read it',
                     'microsoft/Phi-3-vision-128k-instruct-onnx gpu/gpu-int4-rtn-block-32',
                     'ros2 run phi3v_ros fetch_model']),
        'genai_broken': ({'model_path': tiny_model}, broken_env,
                         ['onnxruntime-genai is installed', 'but cannot be loaded',
                          'the library libcudnn.so.9 is missing', 'another CUDA/JetPack',
                          'build_genai_wheel --install']),
    }


def test_model_and_install_mistakes_fail_with_what_to_do(tiny_model, tmp_path):
    cases = mistakes(tiny_model, tmp_path)
    processes = {name: NodeProcess({**FAILING, **parameters}, ['-r', f'__ns:=/{name}'], env=env)
                 for name, (parameters, env, _) in cases.items()}
    peers = {name: NodePeer(f'/{name}') for name in cases}
    try:
        for name, (_, _, texts) in cases.items():
            peer, process = peers[name], processes[name]
            peer.wait_connected()
            assert peer.wait_diagnostic(lambda v: v.get('engine_state') == 'failed', 60), (
                name, peer.latest_diagnostic('engine_detail'), process.output())
            status = peer.latest_status()
            assert status.level == b'\x02', (name, status.message)
            assert all(text in status.message for text in texts), (name, status.message)
            reply = peer.ask_and_wait('Hello?')
            assert reply.startswith(ERROR + 'the model is not available'), reply
            assert all(text in reply for text in texts), (name, reply)
            # 'not installed' would send a Jetson user to a fix that cannot work there
            assert 'not installed' not in reply, reply
            assert process.process.poll() is None, process.output()
        assert 'not installed' not in processes['genai_broken'].output()
    finally:
        for peer in peers.values():
            peer.close()
        for name, process in processes.items():
            assert process.stop() == 0, (name, process.output())


def test_the_default_model_path_follows_the_provider(tiny_model, tmp_path):
    root = tmp_path / 'models'
    cpu_folder = (root / 'Phi-3-vision-128k-instruct-onnx' / 'cpu_and_mobile' /
                  'cpu-int4-rtn-block-32-acc-level-4')
    shutil.copytree(tiny_model, cpu_folder)
    cuda_folder = root / 'Phi-3-vision-128k-instruct-onnx' / 'gpu' / 'gpu-int4-rtn-block-32'
    env = dict(os.environ, PHI3V_ROS_MODEL_DIR=str(root))
    cpu = NodeProcess({**TEXT_ONLY, 'provider': 'cpu'}, ['-r', '__ns:=/cpu'], env=env)
    auto = NodeProcess({**TEXT_ONLY, 'provider': 'auto'}, ['-r', '__ns:=/auto'], env=env)
    cpu_peer, auto_peer = NodePeer('/cpu'), NodePeer('/auto')
    try:
        cpu_peer.wait_connected()
        cpu_peer.wait_ready()
        assert cpu_peer.latest_diagnostic('model_path') == str(cpu_folder)
        assert not cpu_peer.ask_and_wait('Hello?').startswith(ERROR)
        # auto (and cuda) keep the CUDA folder: missing here, and the error says how to get it
        auto_peer.wait_connected()
        assert auto_peer.wait_diagnostic(lambda v: v.get('engine_state') == 'failed', 60), \
            auto.output()
        assert auto_peer.latest_diagnostic('model_path') == str(cuda_folder)
        message = auto_peer.latest_status().message
        assert f"model_path '{cuda_folder}' does not exist" in message, message
        assert '`ros2 run phi3v_ros fetch_model`' in message, message
    finally:
        cpu_peer.close()
        auto_peer.close()
        assert cpu.stop() == 0, cpu.output()
        assert auto.stop() == 0, auto.output()


def test_misspelt_parameters_are_warned_of_with_the_closest_name(tiny_model, tmp_path):
    parameter_file = tmp_path / 'params.yaml'
    parameter_file.write_text('/**:\n  ros__parameters:\n    max_queue: 3\n'
                              '    histroy_turns: 2\n    use_sim_time: false\n')
    node = NodeProcess({**TEXT_ONLY, 'model_path': tiny_model, 'max_new_token': 64,
                        'zzzz': 1},
                       ['--params-file', str(parameter_file), '-r', '__ns:=/typo'])
    peer = NodePeer('/typo')
    try:
        said = node.wait_for_line('parameter max_new_token is not a parameter')
        assert said.endswith('is ignored: did you mean max_new_tokens?'), said
        said = node.wait_for_line('parameter histroy_turns is not a parameter')
        assert said.endswith('did you mean history_turns?'), said
        said = node.wait_for_line('parameter zzzz is not a parameter')
        assert 'ros2 param list' in said, said
        peer.wait_connected()
        peer.wait_ready()
        assert not peer.ask_and_wait('Hello?').startswith(ERROR)
        warned = [line for line in node.lines if 'is not a parameter of this node' in line]
        assert len(warned) == 3, warned   # none for the parameters it has (use_sim_time included)
    finally:
        peer.close()
        assert node.stop() == 0, node.output()


def numpy2_cv_bridge(root):
    """
    Write a cv_bridge package that fails on import as Humble's does beside numpy 2; return root.

    Humble's cv_bridge extension is built for numpy 1: under numpy 2 its import prints numpy's
    warning and fails with "AttributeError: _ARRAY_API not found". Put root first on PYTHONPATH.
    """
    package = root / 'cv_bridge'
    package.mkdir(parents=True)
    (package / '__init__.py').write_text(
        'import sys\n'
        "print('A module that was compiled using NumPy 1.x cannot be run in NumPy 2.x',"
        ' file=sys.stderr)\n'
        "raise AttributeError('_ARRAY_API not found')\n")
    return root


def test_a_cv_bridge_that_cannot_load_is_one_warning_and_the_node_answers(tiny_model, tmp_path):
    from sensor_msgs.msg import Image
    site = numpy2_cv_bridge(tmp_path / 'site')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    node = NodeProcess({**BASE, 'model_path': tiny_model}, ['-r', '__ns:=/bridge'], env=env)
    peer = NodePeer('/bridge')
    try:
        said = node.wait_for_line('cv_bridge cannot be used')
        assert '(AttributeError: _ARRAY_API not found)' in said and 'numpy' in said, said
        peer.wait_connected()
        peer.wait_ready()
        frame = Image(height=2, width=2, encoding='rgb8', step=6)
        frame.data = bytes(range(12))
        peer.deliver(frame)
        assert not peer.ask_and_wait('What is in the picture?').startswith(ERROR)
        unknown = Image(height=2, width=2, encoding='32FC2', step=16)   # only cv_bridge has it
        unknown.data = bytes(32)
        peer.deliver(unknown)
        reply = peer.ask_and_wait('And now?')
        assert reply.startswith(ERROR + 'the camera image could not be used'), reply
        assert node.process.poll() is None, node.output()
        warned = [line for line in node.lines if 'cv_bridge cannot be used' in line]
        assert len(warned) == 1, warned
    finally:
        peer.close()
        assert node.stop() == 0, node.output()
