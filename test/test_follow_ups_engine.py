"""
Follow-up questions in the engine: the kept sequence (image included) continued.

On the real pipeline with the tiny model, CPU.

The reference for "the same answer": the whole conversation (first prompt with its image, first
answer, follow-up turn) run from scratch as one prompt, with the same image inputs, greedy.
"""
import numpy as np
from phi3v_ros.engine.engine import Engine, EngineConfig
from phi3v_ros.engine.genai_releases import version_tuple
from phi3v_ros.engine.generation import GenerationSettings, Request, StopReason
from phi3v_ros.engine.hd_transform import prepare_image
from phi3v_test_utils import gradient_image
import pytest

og = pytest.importorskip('onnxruntime_genai')
if version_tuple(og.__version__) < (0, 7):
    pytest.skip('append_tokens came in 0.6, NamedTensors from numpy (the reference) in 0.7',
                allow_module_level=True)

KEEP = 400
FIRST = GenerationSettings(max_new_tokens=12, max_crops=1)
FOLLOW = GenerationSettings(max_new_tokens=12, max_crops=1)


@pytest.fixture(scope='module')
def engine(tiny_model):
    return Engine(EngineConfig(model_path=tiny_model, provider='cpu',
                               image_preprocessing='fast'))


@pytest.fixture(autouse=True)
def fresh(engine):
    engine.end_conversation()


def opening(image, keep=KEEP, settings=FIRST):
    return Request(prompt='What is on the table?', images=(image,), settings=settings,
                   keep_tokens=keep)


def follow_up(question='Which one is red?', settings=FOLLOW, images=()):
    return Request(prompt=question, images=images, settings=settings, follow_up=True)


def from_scratch(engine, image, sequence, steps):
    """Greedy tokens of `sequence` (ids, image slots -1) run as one prompt with image's inputs."""
    prepared = prepare_image(image, FIRST.max_crops, exact=False)
    named, _, _ = engine._inputs.build('<|image_1|>', [prepared])
    named['input_ids'] = np.asarray([sequence], dtype=np.int32)
    params = og.GeneratorParams(engine._model)
    params.set_search_options(max_length=len(sequence) + steps, do_sample=False)
    generator = og.Generator(engine._model, params)
    generator.set_inputs(named)
    tokens = []
    for _ in range(steps):
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def test_a_follow_up_continues_the_kept_sequence_and_prefills_only_its_turn(engine):
    image = gradient_image(300, 400, seed=1)
    first = engine.generate(opening(image))
    assert first.ok and not first.continued and first.kept_tokens_left > 0, first.error
    assert first.max_length == first.prompt_tokens + FIRST.max_new_tokens + KEEP
    before = engine.conversation_sequence()
    second = engine.generate(follow_up())
    assert second.ok and second.continued and second.fresh_because == '', second.error
    assert second.image_tokens == 0 and second.prompt_tokens < 40   # its own turn only
    assert second.generated_tokens == FOLLOW.max_new_tokens       # not max_length: the budget
    after = engine.conversation_sequence()
    assert after[:len(before)] == before                          # the image's tokens included
    assert len(after) == len(before) + second.prompt_tokens + second.generated_tokens
    assert second.kept_tokens_left == first.kept_tokens_left - second.prompt_tokens \
        - second.generated_tokens


def test_a_follow_up_answers_as_the_whole_conversation_from_scratch(engine):
    image = gradient_image(300, 400, seed=2)
    engine.generate(opening(image))
    second = engine.generate(follow_up())
    sequence = engine.conversation_sequence()
    answer = sequence[-second.generated_tokens:]
    head = sequence[:-second.generated_tokens]
    assert from_scratch(engine, image, head, len(answer)) == answer
    # and the answer depends on what is kept: the same turns about another image differ
    other = from_scratch(engine, gradient_image(300, 400, seed=7), head, len(answer))
    assert other != answer


def test_a_follow_up_that_cannot_continue_is_not_answered_and_says_why(engine):
    image = gradient_image(200, 200, seed=3)
    engine.generate(opening(image))
    engine.generate(Request(prompt='Something else?', settings=FOLLOW))    # not a follow-up
    assert not engine.conversation_open
    refused = engine.generate(follow_up(images=(image,)))
    assert not refused.ok and refused.generated_tokens == 0 and not refused.continued
    assert 'no conversation is kept' in refused.fresh_because
    assert refused.error.startswith('the conversation cannot be continued')
    # the budget: a follow-up that does not fit what is left
    engine.generate(opening(image, keep=20))
    over = engine.generate(follow_up(settings=GenerationSettings(max_new_tokens=30)))
    assert not over.ok and 'token budget is used up' in over.fresh_because
    # a format does not continue a conversation
    engine.generate(opening(image))
    formatted = engine.generate(Request(prompt='Red?', follow_up=True, settings=FOLLOW,
                                        answer_format=('choices', ('yes', 'no'))))
    assert not formatted.ok and 'format' in formatted.fresh_because
    assert not engine.conversation_open


def test_a_cancelled_follow_up_ends_the_conversation(engine):
    engine.generate(opening(gradient_image(200, 200, seed=4)))
    steps = []
    cancelled = engine.generate(follow_up(), should_stop=lambda: steps.append(1) or
                                len(steps) > 3)
    assert cancelled.stop_reason == StopReason.CANCELLED and cancelled.continued
    assert not engine.conversation_open


def test_an_answer_that_ended_by_itself_is_closed_by_one_end_token(tiny_model_that_ends):
    engine = Engine(EngineConfig(model_path=tiny_model_that_ends, provider='cpu'))
    first = engine.generate(opening(gradient_image(200, 200, seed=5)))
    assert first.stop_reason == StopReason.END_OF_TEXT and engine.conversation_open
    length = len(engine.conversation_sequence())
    second = engine.generate(follow_up())
    assert second.continued and second.ok, second.error
    sequence = engine.conversation_sequence()
    (end,) = engine.eos_token_ids
    # the chat format: the answer, one <|end|>, the next user turn (build_chat_prompt's)
    assert sequence[length - 1] != end and sequence[length] == end


def test_the_memory_guard_counts_the_kv_budget_kept_for_follow_ups(engine):
    from phi3v_ros.engine.memory_guard import MemoryGuard, SLACK
    image = gradient_image(200, 200, seed=6)
    plain = engine.generate(Request(prompt='What is on the table?', images=(image,),
                                    settings=FIRST))
    guard = engine.memory_guard
    room = int(guard.kv_bytes(plain.max_length + KEEP // 2) * SLACK)    # not the whole budget
    engine.memory_guard = MemoryGuard(guard.per_token_bytes, 'cpu', lambda: (room, 'a test'))
    try:
        refused = engine.generate(opening(image))
        assert not refused.ok and 'not enough memory' in refused.error
        assert f'{plain.max_length + KEEP} tokens' in refused.error, refused.error
        assert engine.generate(Request(prompt='What is on the table?', images=(image,),
                                       settings=FIRST)).ok    # without the budget it fits
    finally:
        engine.memory_guard = guard
