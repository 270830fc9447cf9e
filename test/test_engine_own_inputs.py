"""
The engine building the model's inputs itself (fast / exact) against genai's processor.

Real pipeline, tiny model: the input_ids the engine builds equal the processor's for many prompts,
exact mode gives the processor's answer for many frames, fast mode the same greedy answer, the
crop budget sets the prompt tokens the HD transform's formula says, and an fp16 vision graph gets
float16 pixel values. On a release that cannot take inputs built outside its processor (before
0.7) the engine falls back to the processor by itself.
"""
import pathlib
import shutil

import numpy as np
from phi3v_ros.base.errors import ModelLoadError
from phi3v_ros.engine.engine import Engine, EngineConfig
from phi3v_ros.engine.generation import GenerationSettings, Request, Turn
from phi3v_ros.engine.hd_transform import crop_grid
from phi3v_ros.engine.model_inputs import prompt_token_ids, takes_own_inputs
from phi3v_ros.engine.prompt import build_chat_prompt
from phi3v_test_utils import gradient_image
import pytest

og = pytest.importorskip('onnxruntime_genai')
OWN = takes_own_inputs(og)
needs_own_inputs = pytest.mark.skipif(not OWN, reason='NamedTensors from numpy came in 0.7')

SETTINGS = GenerationSettings(max_new_tokens=12)
# (height, width): landscape, portrait, square, tiny, odd, wide, 1080p
FRAMES = [(480, 640), (640, 480), (336, 336), (1, 1), (16, 16), (333, 777), (999, 1000),
          (300, 2000), (1080, 1920)]


def noisy_image(height, width, seed):
    rng = np.random.default_rng(seed)
    return np.clip(gradient_image(height, width).astype(np.int16)
                   + rng.integers(-40, 41, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def engines(tiny_model):
    # max_image_side 0: the processor gets the frame as it is, as the own path does
    return {mode: Engine(EngineConfig(model_path=tiny_model, provider='cpu', max_image_side=0,
                                      image_preprocessing=mode))
            for mode in ('fast', 'exact', 'processor')}


def test_no_text_becomes_a_special_token(tiny_model):
    # The tiny tokenizer has Phi-3's special tokens: <unk> 0, <s> 1, </s> 2, <|...|> above 900
    tokenizer = og.Tokenizer(og.Model(tiny_model))
    raw = list(tokenizer.encode('a <s> b </s> c <unk> <|end|>'))
    assert {0, 1, 2} & set(raw), 'the raw text does hold special tokens'
    prompt = build_chat_prompt('a <s> b </s> c <unk> <|end|>', system_prompt='<s>',
                               history=[Turn('</s>', '<unk>')])
    special = {0, 1, 2} | {tokenizer.encode(tag)[-1] for tag in ('<|end|>', '<|user|>')}
    ours = [int(t) for t in tokenizer.encode(prompt)]
    ours = ours[1:] if ours[:1] == [1] else ours      # a BOS in front is the tokenizer's own (0.4)
    assert not {0, 1, 2} & set(ours)
    assert sum(t in special for t in ours) == sum(prompt.count(tag) for tag in (
        '<|end|>', '<|user|>')), "only the template's own tags"


@needs_own_inputs
@pytest.mark.parametrize('question,system,history', [
    ('What is this?', '', ()),
    ('  Describe the scene in detail, please.\n', 'You are a robot.', ()),
    ('And now?', '', (Turn('What colour is it?', 'Red, mostly.'),)),
    ('Ünïcödé and <|end|> tags', 'Be brief.', (Turn('a', 'b'), Turn('c', 'd'))),
])
@pytest.mark.parametrize('with_image', [True, False])
def test_input_ids_are_the_processors(tiny_model, question, system, history, with_image):
    model = og.Model(tiny_model)
    processor = model.create_multimodal_processor()
    tokenizer = og.Tokenizer(model)
    prompt = build_chat_prompt(question, images=int(with_image), system_prompt=system,
                               history=history)
    images, tokens = None, []
    if with_image:
        import cv2
        png = cv2.imencode('.png', noisy_image(480, 640, 1))[1].tobytes()
        images = og.Images.open_bytes(png)
        tokens = [crop_grid(480, 640).image_tokens]
    expected = processor(prompt, images=images)['input_ids'].as_numpy()
    ours = prompt_token_ids(tokenizer.encode, prompt, tokens)
    assert ours.dtype == np.int32 and ours.shape == expected.shape
    assert np.array_equal(ours, expected)


@needs_own_inputs
@pytest.mark.parametrize('height,width', FRAMES)
def test_exact_mode_answers_as_the_processor(engines, height, width):
    frame = noisy_image(height, width, height * 7 + width)
    answers = {mode: engines[mode].generate(Request(prompt='What is this?', images=(frame,),
                                                    settings=SETTINGS))
               for mode in ('exact', 'processor')}
    exact, processor = answers['exact'], answers['processor']
    assert exact.ok and processor.ok, (exact.error, processor.error)
    assert exact.prompt_tokens == processor.prompt_tokens
    assert exact.image_tokens == processor.image_tokens == crop_grid(height, width).image_tokens
    assert exact.text == processor.text   # the same inputs, bit for bit: the same greedy tokens
    grid = crop_grid(height, width)
    assert exact.image_crops == 1 + grid.rows * grid.cols and processor.image_crops == 17


@needs_own_inputs
@pytest.mark.parametrize('height,width', FRAMES)
def test_fast_mode_gives_the_same_greedy_answer(engines, height, width):
    frame = noisy_image(height, width, height * 7 + width)
    fast = engines['fast'].generate(Request(prompt='What is this?', images=(frame,),
                                            settings=SETTINGS))
    processor = engines['processor'].generate(Request(prompt='What is this?', images=(frame,),
                                                      settings=SETTINGS))
    assert fast.ok, fast.error
    assert fast.prompt_tokens == processor.prompt_tokens
    assert fast.text == processor.text


@needs_own_inputs
@pytest.mark.parametrize('max_crops,image_tokens,crops',
                         [(16, 1921, 13), (9, 1489, 10), (4, 757, 5), (1, 313, 2)])
def test_the_crop_budget_sets_the_image_tokens(engines, max_crops, image_tokens, crops):
    frame = noisy_image(480, 640, 3)   # 4:3
    # the processor's prompt (always 16 crops) gives the text tokens around the image
    reference = engines['processor'].generate(Request(prompt='What is this?', images=(frame,),
                                                      settings=SETTINGS))
    text_tokens = reference.prompt_tokens - reference.image_tokens
    settings = GenerationSettings(max_new_tokens=12, max_crops=max_crops)
    for mode in ('fast', 'exact'):
        result = engines[mode].generate(Request(prompt='What is this?', images=(frame,),
                                                settings=settings))
        assert result.ok, result.error
        assert result.image_tokens == image_tokens and result.image_crops == crops
        assert result.prompt_tokens == text_tokens + image_tokens
        assert result.max_length == result.prompt_tokens + 12


@needs_own_inputs
def test_fewer_crops_give_another_answer_than_sixteen(engines):
    frame = noisy_image(480, 640, 4)
    texts = {crops: engines['exact'].generate(Request(
        prompt='What is this?', images=(frame,),
        settings=GenerationSettings(max_new_tokens=24, max_crops=crops))).text
        for crops in (16, 1)}
    assert texts[16] and texts[1] and texts[16] != texts[1]   # the model saw other inputs


@needs_own_inputs
def test_text_only_prompts_match_between_the_paths(engines):
    results = [engines[mode].generate(Request(prompt='Hello there, robot.', settings=SETTINGS))
               for mode in ('fast', 'processor')]
    assert all(r.ok for r in results), [r.error for r in results]
    assert results[0].prompt_tokens == results[1].prompt_tokens
    assert results[0].text == results[1].text and results[0].image_crops == 0


def edited_vision_model(tiny_model, target, edit):
    """Copy the tiny model with its vision graph changed by edit(graph), as other exports are."""
    onnx = pytest.importorskip('onnx')
    shutil.copytree(tiny_model, target)
    path = pathlib.Path(target) / 'vision.onnx'
    graph_model = onnx.load(str(path))
    edit(graph_model.graph)
    onnx.save(graph_model, str(path))
    return str(target)


def takes_float16(graph):
    """Make the graph take float16 pixel_values (as the fp16 exports), cast inside."""
    from onnx import helper, TensorProto
    for node in graph.node:
        node.input[:] = ['pixel_values_float' if name == 'pixel_values' else name
                         for name in node.input]
    graph.node.insert(0, helper.make_node('Cast', ['pixel_values'], ['pixel_values_float'],
                                          to=TensorProto.FLOAT))
    next(i for i in graph.input if i.name == 'pixel_values').type.tensor_type.elem_type = \
        TensorProto.FLOAT16


def takes_17_crops(graph):
    """Make the graph declare 17 crops (the processor's count) instead of a symbolic count."""
    pixel_values = next(i for i in graph.input if i.name == 'pixel_values')
    dim = pixel_values.type.tensor_type.shape.dim[1]
    dim.ClearField('dim_param')
    dim.dim_value = 17


@needs_own_inputs
@pytest.mark.parametrize('edit', [takes_float16, takes_17_crops])
def test_the_pixel_values_adapt_to_what_the_vision_graph_declares(tiny_model, tmp_path, edit):
    # float16: nothing casts NamedTensors. 17 crops: the published graph declares
    # [num_images, max_num_crops, ...], but whether it runs with fewer than the processor's 17 was
    # never checked on the real weights; if not, zero crops are appended as the processor does.
    model = edited_vision_model(tiny_model, tmp_path / edit.__name__, edit)
    frame = noisy_image(480, 640, 5)
    own = Engine(EngineConfig(model_path=model, provider='cpu', image_preprocessing='exact'))
    processor = Engine(EngineConfig(model_path=model, provider='cpu', max_image_side=0,
                                    image_preprocessing='processor'))
    reference = processor.generate(Request(prompt='What is this?', images=(frame,),
                                           settings=SETTINGS))
    first = own.generate(Request(prompt='What is this?', images=(frame,), settings=SETTINGS))
    assert first.ok, first.error   # refused once, then adapted
    second = own.generate(Request(prompt='What is this?', images=(frame,), settings=SETTINGS))
    assert first.text == second.text == reference.text
    fewer = own.generate(Request(prompt='What is this?', images=(frame,),
                                 settings=GenerationSettings(max_new_tokens=12, max_crops=4)))
    assert fewer.ok and fewer.image_tokens == crop_grid(480, 640, 4).image_tokens, fewer.error


def needs_17_crops_inside(graph):
    """Make the graph reshape pixel_values to 17 crops inside (a count its declaration hides)."""
    from onnx import helper, TensorProto
    for node in graph.node:
        node.input[:] = ['pixel_values_17' if name == 'pixel_values' else name
                         for name in node.input]
    graph.node.insert(0, helper.make_node('Reshape', ['pixel_values', 'shape_17'],
                                          ['pixel_values_17']))
    graph.node.insert(0, helper.make_node('Constant', [], ['shape_17'], value=helper.make_tensor(
        'shape_17', TensorProto.INT64, [5], [-1, 17, 3, 336, 336])))


@needs_own_inputs
def test_a_vision_graph_that_refuses_our_inputs_falls_back_to_the_processor(tiny_model, tmp_path):
    model = edited_vision_model(tiny_model, tmp_path / 'needs_17', needs_17_crops_inside)
    frame = noisy_image(480, 640, 8)
    said = []
    own = Engine(EngineConfig(model_path=model, provider='cpu', max_image_side=0), log=said.append)
    processor = Engine(EngineConfig(model_path=model, provider='cpu', max_image_side=0,
                                    image_preprocessing='processor'))
    first = own.generate(Request(prompt='What is this?', images=(frame,), settings=SETTINGS))
    assert first.ok, first.error
    assert own.image_preprocessing == 'processor' and first.image_crops == 17
    assert any("using onnxruntime-genai's processor from now on" in line for line in said), said
    reference = processor.generate(Request(prompt='What is this?', images=(frame,),
                                           settings=SETTINGS))
    assert first.text == reference.text
    # a model that takes our inputs never falls back: a bad request stays that request's error
    fine = Engine(EngineConfig(model_path=tiny_model, provider='cpu'))
    assert fine.generate(Request(prompt='What is this?', images=(frame,), settings=SETTINGS)).ok
    assert fine.image_preprocessing == 'fast'


def test_an_unknown_preprocessing_is_a_load_error(tiny_model):
    with pytest.raises(ModelLoadError, match='image_preprocessing must be one of fast, exact'):
        Engine(EngineConfig(model_path=tiny_model, provider='cpu', image_preprocessing='pil'))


def test_releases_that_cannot_take_own_inputs_use_the_processor(tiny_model):
    said = []
    engine = Engine(EngineConfig(model_path=tiny_model, provider='cpu'), log=said.append)
    if OWN:
        assert engine.image_preprocessing == 'fast' and not said
        return
    assert engine.image_preprocessing == 'processor'
    assert any('NamedTensors from numpy came in 0.7' in line for line in said), said
    result = engine.generate(Request(prompt='What is this?', images=(noisy_image(480, 640, 6),),
                                     settings=GenerationSettings(max_new_tokens=4, max_crops=4)))
    assert result.ok and result.image_crops == 17   # the processor's 16 crops whatever is set


# What ONNX Runtime said here: the tiny model with the vision graphs above (0.18, CPU) ...
REFUSALS = [
    "Non-zero status code returned while running Reshape node. Name:'' Status Message: "
    'reshape_helper.h:84 The input tensor cannot be reshaped to the requested shape. Input '
    'shape:{1,13,3,336,336}, requested shape:{-1,17,3,336,336}',
    'Got invalid dimensions for input: pixel_values for the following indices\n index: 1 Got: '
    '13 Expected: 17\n Please fix either the inputs/outputs or the model.',
    'Unexpected input data type. Actual: (tensor(float)) , expected: (tensor(float16))',
]
# ... and what it says on a GPU out of memory (BFC arena, CUDA allocator), at any request
PASSING = [
    "Non-zero status code returned while running MatMul node. Name:'/vision/MatMul' Status "
    'Message: bfc_arena.cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, '
    'onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for '
    'requested buffer of size 1073741824',
    "Non-zero status code returned while running Conv node. Name:'/vision/Conv' Status Message: "
    'CUDA failure 2: out of memory ; GPU=0 ; hostname=orin ; expr=cudaMalloc((void**)&p, size);',
]


def test_only_refusals_of_the_inputs_mean_the_model_needs_the_processor():
    from phi3v_ros.engine.model_inputs import InputBuilder
    assert all(InputBuilder.refuses_inputs(RuntimeError(text)) for text in REFUSALS)
    assert not any(InputBuilder.refuses_inputs(RuntimeError(text)) for text in PASSING)


@needs_own_inputs
@pytest.mark.parametrize('failure', PASSING)
def test_a_passing_failure_at_the_first_image_keeps_our_inputs(tiny_model, failure, monkeypatch):
    engine = Engine(EngineConfig(model_path=tiny_model, provider='cpu'))
    start_generator = engine._start_generator
    failures = [RuntimeError(failure)]

    def failing_once(*arguments):     # the real generator, after one real-looking failure
        if failures:
            raise failures.pop()
        return start_generator(*arguments)

    monkeypatch.setattr(engine, '_start_generator', failing_once)
    request = Request(prompt='What is this?', images=(noisy_image(480, 640, 9),),
                      settings=GenerationSettings(max_new_tokens=4, max_crops=4))
    first = engine.generate(request)
    assert not first.ok and failure.split(' ; ')[0][-40:] in first.error
    assert engine.image_preprocessing == 'fast', 'no switch to the processor for it'
    second = engine.generate(request)
    assert second.ok, second.error
    assert second.image_crops == crop_grid(480, 640, 4).num_crops + 1, 'max_crops still holds'
