"""
The engine on whichever onnxruntime-genai release is installed (0.4 to 0.18; each CI leg pins one).

Real pipeline, tiny model: the folder layout the release reads works, the other layout fails with
an error naming the release or folder that works, prompts are counted exactly where the release
hides the processor's tensors (before 0.7), and releases before og.Config (0.4) run the provider
their genai_config.json lists.
"""
import json
import shutil
import types

from phi3v_ros.base.errors import ModelLoadError
from phi3v_ros.engine.engine import Engine, EngineConfig
from phi3v_ros.engine.genai_releases import check_genai_release, listed_provider, version_tuple
from phi3v_ros.engine.generation import GenerationSettings, Request, StopReason
from phi3v_ros.engine.hd_transform import crop_grid
from phi3v_test_utils import genai_then_engine_error, gradient_image
import pytest

og = pytest.importorskip('onnxruntime_genai')
mtm = pytest.importorskip('phi3v_ros.tools.make_tiny_model')

LAYOUT = mtm.layout_for_genai()
OTHER_LAYOUT = 'nov2024' if LAYOUT == 'may2024' else 'may2024'
# (height, width): landscape, portrait, square, tiny, extreme, and a portrait frame whose resized
# width is no multiple of 336 (the case 0.3 got wrong)
SIZES = [(480, 640), (640, 480), (1000, 999), (999, 1000), (16, 16), (1, 1), (300, 2000),
         (2000, 300), (1080, 1920)]


@pytest.fixture(scope='module', params=['processor', 'fast'])
def engine(tiny_model, request):
    # genai's processor, counted by the engine before 0.7; and the inputs the engine builds
    # (where the release takes them; on older ones 'fast' falls back to the processor)
    return Engine(EngineConfig(model_path=tiny_model, provider='cpu',
                               image_preprocessing=request.param))


def test_the_layout_for_this_release_is_the_one_fetch_model_picks():
    from phi3v_ros.tools.fetch_model import select_folder
    assert select_folder('int4', og.__version__).export == LAYOUT
    assert mtm.layout_for_genai('0.4.0') == 'may2024'
    assert mtm.layout_for_genai('0.5.0') == mtm.layout_for_genai('0.18.0') == 'nov2024'


def test_a_folder_of_the_other_layout_names_what_reads_it(tmp_path):
    other = mtm.make_tiny_model(tmp_path / 'other', layout=OTHER_LAYOUT)
    message = genai_then_engine_error(other, 'Unknown value')
    # what the release itself would say, then which release or folder works
    assert 'Unknown value' in message, message
    if OTHER_LAYOUT == 'may2024':
        assert 'May-2024 Phi-3-vision export' in message, message
        assert 'install onnxruntime-genai 0.4.0' in message
    else:
        assert 'Nov-2024 Phi-3-vision re-export' in message, message
        assert 'onnxruntime-genai >= 0.5' in message
    assert 'fetch_model' in message


@pytest.mark.parametrize('height,width', SIZES)
def test_max_length_is_exactly_the_prompt_plus_the_new_tokens(engine, height, width):
    # Before 0.7 the engine counts the prompt itself (tokenizer + HD transform) and reads the
    # generator's sequence afterwards: max_length == prompt + 3 holds only if both agree.
    result = engine.generate(Request(prompt='What is this?',
                                     images=(gradient_image(height, width),),
                                     settings=GenerationSettings(max_new_tokens=3)))
    assert result.stop_reason == StopReason.LENGTH, result.error
    assert result.generated_tokens == 3
    assert result.max_length == result.prompt_tokens + 3
    assert result.image_tokens == crop_grid(*result.image_sizes[0]).image_tokens


def test_text_only_prompts_are_counted_exactly_too(engine):
    result = engine.generate(Request(prompt='Hello there, robot.',
                                     settings=GenerationSettings(max_new_tokens=4)))
    assert result.generated_tokens == 4 and result.image_tokens == 0
    assert result.max_length == result.prompt_tokens + 4


@pytest.mark.skipif(not hasattr(og.NamedTensors, 'keys'),
                    reason='the processor tensors are readable from 0.7 on')
@pytest.mark.parametrize('height,width', SIZES)
def test_crop_grid_tokens_are_what_the_processor_reports(tiny_model, height, width):
    import cv2
    model = og.Model(og.Config(tiny_model))
    processor = model.create_multimodal_processor()
    ok, png = cv2.imencode('.png', gradient_image(height, width))
    assert ok
    inputs = processor('<|user|>\n<|image_1|>\nHi<|end|>\n<|assistant|>\n',
                       images=og.Images.open_bytes(png.tobytes()))
    tokens = int(inputs['num_image_tokens'].as_numpy().sum())
    assert tokens == crop_grid(height, width).image_tokens


def test_listed_provider_reads_the_first_provider_option():
    assert listed_provider({}) == 'cpu'
    assert listed_provider({'session_options': {'provider_options': []}}) == 'cpu'
    cuda = {'session_options': {'provider_options': [{'cuda': {'enable_cuda_graph': '0'}}]}}
    assert listed_provider(cuda) == 'cuda'


without_config = pytest.mark.skipif(hasattr(og, 'Config'),
                                    reason='this release sets providers through og.Config')


def lists_cuda(tiny_model, tmp_path):
    folder = tmp_path / 'cuda_folder'
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / 'genai_config.json').read_text())
    config['model']['decoder']['session_options']['provider_options'] = [{'cuda': {}}]
    (folder / 'genai_config.json').write_text(json.dumps(config))
    return str(folder)


@without_config
def test_without_og_config_a_cpu_folder_runs_on_cpu(tiny_model):
    said = []
    engine = Engine(EngineConfig(model_path=tiny_model, provider='auto'), log=said.append)
    assert engine.provider == 'cpu'
    assert any('genai_config.json lists it' in line for line in said), said
    result = engine.generate(Request(prompt='Hi', settings=GenerationSettings(max_new_tokens=2)))
    assert result.generated_tokens == 2, result.error


@without_config
def test_without_og_config_another_provider_cannot_be_chosen(tiny_model, tmp_path):
    folder = lists_cuda(tiny_model, tmp_path)
    with pytest.raises(ModelLoadError, match=r'cannot set the provider.*lists \(cuda\).*'
                                             r'set provider to cuda or auto.*>= 0\.5'):
        Engine(EngineConfig(model_path=folder, provider='cpu'))


@without_config
def test_without_og_config_a_cuda_folder_on_a_cpu_build_says_so(tiny_model, tmp_path):
    if og.is_cuda_available():
        pytest.skip('this build has CUDA')
    with pytest.raises(ModelLoadError, match='no CUDA support'):
        Engine(EngineConfig(model_path=lists_cuda(tiny_model, tmp_path), provider='auto'))


@without_config
def test_without_og_config_device_and_cuda_graph_cannot_be_set(tiny_model):
    for config in (EngineConfig(model_path=tiny_model, provider='cpu', device_id=1),
                   EngineConfig(model_path=tiny_model, provider='cpu', cuda_graph=True)):
        with pytest.raises(ModelLoadError, match='device_id and cuda_graph cannot be set'):
            Engine(config)


def release(version, multimodal=True):
    """Describe a release by the attributes check_genai_release looks at (0.2 has no Images)."""
    model = type('Model', (), {'create_multimodal_processor': None} if multimodal else {})
    module = types.SimpleNamespace(__version__=version, Model=model)
    if multimodal:
        module.Images = object
    return module


def test_releases_before_0_4_are_refused_with_the_release_to_install():
    # Measured: 0.2.0 has no og.Images and its og.Model refuses a phi3v folder ("Unknown value:
    # inputs_embeds"); 0.3.0 loads the May-2024 layout but pads portrait images by height only.
    with pytest.raises(ModelLoadError, match=r'0\.2\.0 is too old for Phi-3-vision.*>= 0\.4'):
        check_genai_release(release('0.2.0', multimodal=False))
    with pytest.raises(ModelLoadError, match=r'0\.3\.0 is too old.*portrait.*>= 0\.4'):
        check_genai_release(release('0.3.0'))
    for version in ('0.4.0', '0.11.4', '0.18.0', og.__version__):
        check_genai_release(release(version))
    check_genai_release(og)


@pytest.mark.parametrize('version,expected', [
    ('0.5.2', (0, 5, 2)), ('0.18.0', (0, 18, 0)), ('0.5rc1', (0, 5)), ('0.3rc1', (0, 3)),
    ('0.11.4.dev20251201', (0, 11, 4)), ('unknown', (999,)), ('', (999,))])
def test_versions_are_read_by_their_leading_numbers(version, expected):
    assert version_tuple(version) == expected
