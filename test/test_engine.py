"""The engine on the real onnxruntime-genai pipeline with the tiny generated model (no fakes)."""
import json
import os
import shutil
import subprocess
import sys

from phi3v_ros.base.errors import ModelLoadError
from phi3v_ros.engine.engine import Engine, EngineConfig, import_genai, resolve_provider
from phi3v_ros.engine.genai_releases import version_tuple
from phi3v_ros.engine.generation import GenerationSettings, Request, StopReason, Turn
from phi3v_test_utils import (broken_genai_install, genai_then_engine_error, gradient_image,
                              lfs_pointer_model, may2024_model)
import pytest

og = pytest.importorskip('onnxruntime_genai')
OLD_RELEASE = version_tuple(og.__version__) < (0, 5)

GREEDY_16 = GenerationSettings(max_new_tokens=16)


@pytest.fixture(scope='module')
def engine(tiny_model):
    return Engine(EngineConfig(model_path=tiny_model, provider='cpu'))


def test_text_only_question_is_answered(engine):
    result = engine.generate(Request(prompt='Hello, who are you?', settings=GREEDY_16))
    assert result.ok, result.error
    assert result.image_tokens == 0
    assert result.generated_tokens > 0 and result.text.strip()
    assert result.time_to_first_token_s > 0 and result.total_s >= result.time_to_first_token_s


@pytest.mark.parametrize('height,width',
                         [(16, 16), (480, 640), (1080, 1920), (1920, 480), (300, 2000), (1, 1)])
def test_one_image_of_any_size_and_aspect_is_answered(engine, height, width):
    result = engine.generate(Request(prompt='What is this?',
                                     images=(gradient_image(height, width),),
                                     settings=GREEDY_16))
    assert result.ok, result.error
    assert result.generated_tokens > 0
    # The HD transform fills up to 16 crops of 336 px whatever the size: about 1,900-2,500 tokens.
    assert 1500 < result.image_tokens < 3000
    if engine.image_preprocessing == 'processor':   # bounded before encoding (max_image_side)
        assert max(result.image_sizes[0]) == min(max(height, width), 1344)
    else:                                            # the inputs come from the frame as it is
        assert result.image_sizes[0] == (height, width)
    assert result.prompt_tokens > result.image_tokens


def test_large_frames_are_bounded_before_encoding_for_the_processor(tiny_model):
    small = Engine(EngineConfig(model_path=tiny_model, provider='cpu', max_image_side=336,
                                image_preprocessing='processor'))
    result = small.generate(Request(prompt='What is this?', images=(gradient_image(1080, 1920),),
                                    settings=GenerationSettings(max_new_tokens=2)))
    assert result.ok, result.error
    assert result.image_sizes[0] == (189, 336)


def test_stops_at_end_of_text(tiny_model_that_ends):
    engine = Engine(EngineConfig(model_path=tiny_model_that_ends, provider='cpu'))
    result = engine.generate(Request(prompt='What is this?', images=(gradient_image(64, 64),),
                                     settings=GREEDY_16))
    assert result.stop_reason == StopReason.END_OF_TEXT
    assert result.generated_tokens == 0 and result.text == ''


def test_stops_at_max_new_tokens_with_max_length_sized_per_request(engine):
    result = engine.generate(Request(prompt='What is this?', images=(gradient_image(480, 640),),
                                     settings=GenerationSettings(max_new_tokens=5)))
    assert result.stop_reason == StopReason.LENGTH
    assert result.generated_tokens == 5
    assert result.max_length == result.prompt_tokens + 5
    assert result.max_length < 7680


def test_max_length_is_capped_by_the_context_length(tiny_model_short_context):
    # A short context (640 tokens): generating up to the 32k of the shared model takes minutes.
    engine = Engine(EngineConfig(model_path=tiny_model_short_context, provider='cpu'))
    result = engine.generate(Request(prompt='Hi',
                                     settings=GenerationSettings(max_new_tokens=100000)))
    assert result.ok, result.error
    assert result.prompt_tokens < engine.context_length
    assert result.max_length == engine.context_length
    # the tiny model never ends on its own: it generates until the context is full, not beyond
    assert result.stop_reason == StopReason.LENGTH
    assert result.prompt_tokens + result.generated_tokens == engine.context_length


def test_prompt_longer_than_the_context_is_an_error_not_a_crash(engine):
    result = engine.generate(Request(prompt='word ' * engine.context_length, settings=GREEDY_16))
    assert result.stop_reason == StopReason.ERROR
    assert 'tokens long' in result.error


def test_streamed_pieces_join_to_the_final_text(engine):
    pieces = []
    result = engine.generate(Request(prompt='Describe it.', images=(gradient_image(240, 320),),
                                     settings=GenerationSettings(max_new_tokens=24)),
                             on_piece=pieces.append)
    assert result.ok and len(pieces) > 1
    assert ''.join(pieces) == result.text


def test_cancel_between_tokens(engine):
    pieces = []
    result = engine.generate(Request(prompt='Describe it.',
                                     settings=GenerationSettings(max_new_tokens=50)),
                             on_piece=pieces.append, should_stop=lambda: len(pieces) >= 3)
    assert result.stop_reason == StopReason.CANCELLED
    assert len(pieces) == 3 and result.text == ''.join(pieces)


def test_greedy_output_is_repeatable_and_depends_on_the_image(engine):
    def answer(seed):
        return engine.generate(Request(prompt='What is this?',
                                       images=(gradient_image(480, 640, seed),),
                                       settings=GREEDY_16)).text
    first = answer(seed=1)
    assert answer(seed=1) == first
    assert answer(seed=2) != first


def test_sampling_with_a_seed_is_repeatable(engine):
    settings = GenerationSettings(max_new_tokens=16, do_sample=True, temperature=1.5, top_k=40,
                                  top_p=0.95, seed=7)
    first = engine.generate(Request(prompt='Tell me a story.', settings=settings))
    again = engine.generate(Request(prompt='Tell me a story.', settings=settings))
    assert first.ok and first.text == again.text


def test_history_and_system_prompt_change_the_prompt_tokens(engine):
    plain = engine.generate(Request(prompt='And now?', settings=GREEDY_16))
    with_context = engine.generate(Request(prompt='And now?', settings=GREEDY_16,
                                           system_prompt='Be brief.',
                                           history=(Turn('What is this?', 'A red cup.'),)))
    assert with_context.ok
    assert with_context.prompt_tokens > plain.prompt_tokens + 5


def test_injected_image_tag_in_a_text_only_prompt_does_not_break_the_request(engine):
    result = engine.generate(Request(prompt='look <|image_1|> here <|end|>', settings=GREEDY_16))
    assert result.ok, result.error
    assert result.image_tokens == 0


def test_out_of_range_settings_are_an_error_result(engine):
    result = engine.generate(Request(prompt='Hi', settings=GenerationSettings(max_new_tokens=0)))
    assert result.stop_reason == StopReason.ERROR and 'max_new_tokens' in result.error


def test_provider_cuda_on_a_cpu_only_install_fails_clearly(tiny_model):
    if og.is_cuda_available():
        pytest.skip('this onnxruntime-genai has CUDA')
    with pytest.raises(ModelLoadError, match='no CUDA support'):
        Engine(EngineConfig(model_path=tiny_model, provider='cuda'))


def test_provider_auto_picks_what_is_available():
    assert resolve_provider('auto', cuda_available=True) == 'cuda'
    assert resolve_provider('auto', cuda_available=False) == 'cpu'
    assert resolve_provider('cpu', cuda_available=True) == 'cpu'
    with pytest.raises(ModelLoadError, match='provider must be one of'):
        resolve_provider('tpu', cuda_available=True)


def test_provider_auto_says_which_it_picked(tiny_model):
    # CUDA builds pick cuda, CPU builds cpu. (og.get_current_gpu_device_id() would tell more, but
    # it segfaults on the CPU wheel.)
    expected = 'cuda' if og.is_cuda_available() else 'cpu'
    said = []
    engine = Engine(EngineConfig(model_path=tiny_model, provider='auto'), log=said.append)
    assert engine.provider == expected
    assert any(f'provider auto: using {expected}' in line for line in said), said


def copy_model(tiny_model, tmp_path):
    target = tmp_path / 'model'
    shutil.copytree(tiny_model, target)
    return target


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match='does not exist'):
        Engine(EngineConfig(model_path=str(tmp_path / 'nope'), provider='cpu'))


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / 'model.onnx'
    path.write_bytes(b'x')
    with pytest.raises(ModelLoadError, match='is a file'):
        Engine(EngineConfig(model_path=str(path), provider='cpu'))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match='no genai_config.json'):
        Engine(EngineConfig(model_path=str(tmp_path), provider='cpu'))


def test_bad_json(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path)
    (model / 'genai_config.json').write_text('{"model": ')
    with pytest.raises(ModelLoadError, match='cannot be read as JSON'):
        Engine(EngineConfig(model_path=str(model), provider='cpu'))


def test_not_a_phi3v_model(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path)
    config = json.loads((model / 'genai_config.json').read_text())
    config['model']['type'] = 'llama'
    (model / 'genai_config.json').write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="type 'llama'"):
        Engine(EngineConfig(model_path=str(model), provider='cpu'))


@pytest.mark.parametrize('missing',
                         ['text.onnx', 'vision.onnx', 'processor_config.json', 'tokenizer.json'])
def test_missing_files_give_a_load_error_naming_the_folder(tiny_model, tmp_path, missing):
    model = copy_model(tiny_model, tmp_path)
    os.remove(model / missing)
    with pytest.raises(ModelLoadError, match='could not load'):
        Engine(EngineConfig(model_path=str(model), provider='cpu'))


def test_the_parent_of_the_model_folder_names_the_folder_meant(tiny_model, tmp_path):
    repository = tmp_path / 'Phi-3-vision-128k-instruct-onnx'
    model = repository / 'gpu' / 'gpu-int4-rtn-block-32'
    shutil.copytree(tiny_model, model)
    for parent in (repository, repository / 'gpu'):   # one and two levels above
        with pytest.raises(ModelLoadError) as info:
            Engine(EngineConfig(model_path=str(parent), provider='cpu'))
        assert (f'{str(parent)!r} has no genai_config.json' in str(info.value)
                and f'did you mean model_path:={model}?' in str(info.value)), info.value
    Engine(EngineConfig(model_path=str(model), provider='cpu'))   # and that one loads


def test_git_lfs_pointers_are_named_before_onnx_runtime_reads_them(tiny_model, tmp_path):
    model = lfs_pointer_model(tiny_model, tmp_path / 'model')
    message = genai_then_engine_error(model, 'Protobuf parsing failed')
    assert 'are git-lfs pointers' in message and 'text.onnx, tokenizer.json' in message
    assert 'git lfs pull' in message and 'fetch_model' in message


@pytest.mark.skipif(OLD_RELEASE, reason='0.4 reads the May-2024 layout')
def test_the_may_2024_layout_names_the_release_and_the_folder_to_use(tiny_model, tmp_path):
    model = may2024_model(tiny_model, tmp_path / 'cuda-int4-rtn-block-32')
    # the fixture is the layout newer releases refuse, with the raw error of the issue
    message = genai_then_engine_error(model, 'Unknown value "visual_features"', RuntimeError)
    assert 'May-2024 Phi-3-vision export' in message and 'only 0.4 (and 0.3) read it' in message
    assert 'microsoft/Phi-3-vision-128k-instruct-onnx gpu/gpu-int4-rtn-block-32' in message
    assert '`ros2 run phi3v_ros fetch_model`' in message
    cpu = may2024_model(tiny_model, tmp_path / 'cpu-int4-rtn-block-32-acc-level-4')
    with pytest.raises(ModelLoadError, match='cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4'):
        Engine(EngineConfig(model_path=str(cpu), provider='cpu'))


def test_onnxruntime_genai_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime_genai', None)   # import raises ModuleNotFound
    with pytest.raises(ModelLoadError) as info:
        import_genai()
    message = str(info.value)
    assert message.startswith('onnxruntime-genai is not installed for this Python')
    assert 'pip install onnxruntime-genai' in message and 'build_genai_wheel' in message


def test_not_installed_outside_a_venv_names_the_colcon_trap(monkeypatch):
    # The node runs the system Python (apt's colcon wrote it into the executables) while the
    # user installed onnxruntime-genai into a venv: the fix is python3 -m colcon build from it.
    monkeypatch.setitem(sys.modules, 'onnxruntime_genai', None)
    monkeypatch.setattr(sys, 'prefix', sys.base_prefix)
    monkeypatch.setenv('VIRTUAL_ENV', '/home/robot/phi3v-venv')
    with pytest.raises(ModelLoadError) as info:
        import_genai()
    message = str(info.value)
    assert '(/home/robot/phi3v-venv is active)' in message, message
    assert '`python3 -m colcon build` from the activated environment' in message
    assert 'pip install onnxruntime-genai' in message   # this Python takes pip


def test_not_installed_in_an_externally_managed_python_leads_to_the_venv(monkeypatch, tmp_path):
    # Ubuntu 24.04's /usr/bin/python3 refuses pip (PEP 668): "pip install" would be a dead end
    import sysconfig
    (tmp_path / 'EXTERNALLY-MANAGED').write_text('[externally-managed]\n')
    monkeypatch.setitem(sys.modules, 'onnxruntime_genai', None)
    monkeypatch.setattr(sys, 'prefix', sys.base_prefix)
    monkeypatch.setattr(sysconfig, 'get_path', lambda name, *a, **k: str(tmp_path))
    monkeypatch.delenv('VIRTUAL_ENV', raising=False)
    with pytest.raises(ModelLoadError) as info:
        import_genai()
    message = str(info.value)
    assert 'refuses pip (PEP 668, externally managed)' in message, message
    assert '`python3 -m venv --system-site-packages`' in message
    assert '`python3 -m colcon build`' in message and 'pip install' not in message


def test_onnxruntime_genai_that_cannot_load_is_not_called_missing(tmp_path):
    # a real broken install (the package's import fails on a CUDA library), in a fresh interpreter
    root = broken_genai_install(tmp_path / 'site')
    code = ('from phi3v_ros.engine.engine import import_genai\n'
            'try:\n    import_genai()\nexcept Exception as exc:\n    print(exc)\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]))
    message = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert 'not installed' not in message
    assert (f'onnxruntime-genai is installed ({root / "onnxruntime_genai"}) but cannot be '
            'loaded: the library libcudnn.so.9 is missing') in message, message
    assert 'another CUDA/JetPack' in message and 'build_genai_wheel --install' in message
    assert 'docs/jetson.md' in message
