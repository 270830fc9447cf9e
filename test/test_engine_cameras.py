"""
Several images (cameras) in one prompt, through the real engine on the tiny model.

Exact mode gives the processor's answer and token counts for two frames of different crop counts
(stacked with zero crops, as the processor pads them); the image tokens add up per image at any
crop budget; an answer about two cameras differs from an answer about either alone; and the camera
names are in the prompt.
"""
from phi3v_ros.engine.engine import Engine, EngineConfig
from phi3v_ros.engine.genai_releases import version_tuple
from phi3v_ros.engine.generation import GenerationSettings, Request
from phi3v_ros.engine.hd_transform import crop_grid
from phi3v_ros.engine.model_inputs import takes_own_inputs
from phi3v_test_utils import gradient_image
import pytest
from test_engine_own_inputs import noisy_image

og = pytest.importorskip('onnxruntime_genai')
needs_own_inputs = pytest.mark.skipif(not takes_own_inputs(og),
                                      reason='NamedTensors from numpy came in 0.7')
# 0.4's processor refuses a second image ("Loading multiple images is not supported")
SEVERAL = version_tuple(og.__version__) >= (0, 5)
needs_several = pytest.mark.skipif(not SEVERAL, reason='several images in a prompt came in 0.5')

SETTINGS = GenerationSettings(max_new_tokens=16)
HEAD = noisy_image(480, 640, 11)      # 4:3, 12 crops + the global view at a budget of 16
WRIST = noisy_image(300, 2000, 12)    # wide: another crop grid, so the crops are padded
CAMERAS = ('/head/image_raw', '/wrist/image_raw')


@pytest.fixture(scope='module')
def engines(tiny_model):
    modes = ('fast', 'exact', 'processor') if takes_own_inputs(og) else ('processor',)
    return {mode: Engine(EngineConfig(model_path=tiny_model, provider='cpu', max_image_side=0,
                                      image_preprocessing=mode))
            for mode in modes}


def ask(engine, images, cameras=CAMERAS, settings=SETTINGS, question='Is the cup held?'):
    result = engine.generate(Request(prompt=question, images=tuple(images),
                                     cameras=tuple(cameras), settings=settings))
    assert result.ok, result.error
    return result


@needs_own_inputs
def test_two_images_in_exact_mode_answer_as_the_processor(engines):
    assert crop_grid(*HEAD.shape[:2]).num_crops != crop_grid(*WRIST.shape[:2]).num_crops
    exact = ask(engines['exact'], [HEAD, WRIST])
    processor = ask(engines['processor'], [HEAD, WRIST])
    assert exact.prompt_tokens == processor.prompt_tokens
    assert exact.image_tokens == processor.image_tokens
    assert exact.text == processor.text and exact.text


@needs_several
@pytest.mark.parametrize('max_crops', [16, 4])
def test_the_image_tokens_add_up_per_image(engines, max_crops):
    settings = GenerationSettings(max_new_tokens=4, max_crops=max_crops)
    expected = [crop_grid(*image.shape[:2], max_crops).image_tokens for image in (HEAD, WRIST)]
    reference = ask(engines['processor'], [HEAD, WRIST], settings=settings)   # always 16 crops
    full = [crop_grid(*image.shape[:2]).image_tokens for image in (HEAD, WRIST)]
    assert reference.image_tokens == sum(full)
    one = ask(engines['processor'], [HEAD], cameras=CAMERAS[:1], settings=settings)
    assert one.image_tokens == full[0]
    for mode in set(engines) - {'processor'}:
        both = ask(engines[mode], [HEAD, WRIST], settings=settings)
        assert both.image_tokens == sum(expected)
        # the text around the images is the processor's: only the image slots are shorter
        assert both.prompt_tokens == reference.prompt_tokens - sum(full) + sum(expected)
        assert both.image_crops == sum(crop_grid(*image.shape[:2], max_crops).num_crops + 1
                                       for image in (HEAD, WRIST))


@needs_several
def test_an_answer_about_two_cameras_differs_from_either_alone(engines):
    for engine in engines.values():
        both = ask(engine, [HEAD, WRIST])
        head = ask(engine, [HEAD], cameras=CAMERAS[:1])
        wrist = ask(engine, [WRIST], cameras=CAMERAS[1:])
        assert both.text != head.text and both.text != wrist.text, engine.image_preprocessing
        assert both.image_tokens == head.image_tokens + wrist.image_tokens


@needs_several
def test_the_camera_names_are_in_the_prompt(engines):
    engine = next(iter(engines.values()))
    named = ask(engine, [HEAD, WRIST])
    swapped = ask(engine, [HEAD, WRIST], cameras=CAMERAS[::-1])
    unnamed = ask(engine, [HEAD, WRIST], cameras=())
    # the label lines are text the model reads: as many tokens either way round, none unnamed
    assert named.prompt_tokens == swapped.prompt_tokens > unnamed.prompt_tokens


def test_the_model_is_told_which_camera_has_no_current_image(engines):
    engine = next(iter(engines.values()))
    told = engine.generate(Request(prompt='Is the cup held?', images=(HEAD,), cameras=CAMERAS[:1],
                                   missing_cameras=CAMERAS[1:], settings=SETTINGS))
    untold = ask(engine, [HEAD], cameras=CAMERAS[:1])
    assert told.ok, told.error
    # the line is text the model reads: more prompt tokens, the same image tokens
    assert told.prompt_tokens > untold.prompt_tokens
    assert told.image_tokens == untold.image_tokens


@needs_several
def test_the_same_picture_twice_costs_twice_its_tokens(engines):
    engine = next(iter(engines.values()))
    picture = gradient_image(240, 320)
    once = ask(engine, [picture], cameras=CAMERAS[:1])
    twice = ask(engine, [picture, picture])
    assert twice.image_tokens == 2 * once.image_tokens


def test_several_images_are_answered_or_refused_saying_what_to_upgrade_to(engines):
    """0.5 and later answer; 0.4 refuses in a sentence (not genai's own words alone)."""
    result = next(iter(engines.values())).generate(
        Request(prompt='Both?', images=(HEAD, WRIST), cameras=CAMERAS, settings=SETTINGS))
    if SEVERAL:
        assert result.ok, result.error
        return
    assert not result.ok
    assert result.error.startswith(f'onnxruntime-genai {og.__version__} cannot take several '
                                   'images in one prompt'), result.error
    assert result.error.endswith('several cameras (image_topics) need 0.5 or later')
