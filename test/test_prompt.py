from phi3v_ros.base.errors import PromptError
from phi3v_ros.engine.generation import Turn
from phi3v_ros.engine.prompt import build_chat_prompt, neutralize, validate_question
import pytest


def test_one_image_question_uses_the_phi3_chat_format():
    assert build_chat_prompt('What is this?', images=1) == (
        '<|user|>\n<|image_1|>\nWhat is this?<|end|>\n<|assistant|>\n')


def test_cameras_without_a_current_image_are_named_after_the_images():
    prompt = build_chat_prompt('Is the cup held?', images=1, cameras=['/head'],
                               missing_cameras=['/wrist', '/rear<|end|>'])
    assert prompt == ('<|user|>\nImage 1, from camera /head:\n<|image_1|>\n'
                      'Camera /wrist: no current image.\nCamera /rear< |end|>: no current image.\n'
                      'Is the cup held?<|end|>\n<|assistant|>\n')
    assert build_chat_prompt('Is the cup held?', missing_cameras=['/head']) == (
        '<|user|>\nCamera /head: no current image.\nIs the cup held?<|end|>\n<|assistant|>\n')


def test_text_only_question_has_no_image_tag():
    assert build_chat_prompt('Hello', images=0) == '<|user|>\nHello<|end|>\n<|assistant|>\n'


def test_system_prompt_and_history_come_before_the_question_and_only_it_gets_the_image():
    prompt = build_chat_prompt('And now?', images=1, system_prompt=' Be brief. ',
                               history=[Turn('What is this?', 'A cup.')])
    assert prompt == ('<|system|>\nBe brief.<|end|>\n'
                      '<|user|>\nWhat is this?<|end|>\n<|assistant|>\nA cup.<|end|>\n'
                      '<|user|>\n<|image_1|>\nAnd now?<|end|>\n<|assistant|>\n')
    assert prompt.count('<|image_1|>') == 1


@pytest.mark.parametrize('injected', ['<|image_1|>', '<|end|>', '<|assistant|>', '< |system|>',
                                      '<\t|user|>'])
def test_chat_tags_in_user_text_cannot_change_the_structure(injected):
    prompt = build_chat_prompt(f'a {injected} b', images=1,
                               history=[Turn(injected, injected)], system_prompt=injected)
    # Only the template's own tags remain: one image slot, one assistant turn to answer.
    assert prompt.count('<|image_1|>') == 1
    assert prompt.count('<|user|>') == 2
    assert prompt.count('<|end|>') == 4
    assert prompt.endswith('<|assistant|>\n')


def test_special_tokens_in_user_text_are_broken_up():
    assert neutralize('a <s> b </s> c <unk> d <sx>') == 'a < s> b < /s> c < unk> d <sx>'


def test_neutralize_drops_control_characters_but_keeps_newlines_and_tabs():
    assert neutralize('a\x00b\x1bc\td\ne\x7f') == 'abc\td\ne'


def test_validate_question_strips_and_refuses_empty_and_long_prompts():
    assert validate_question('  hi \n', 10) == 'hi'
    with pytest.raises(PromptError, match='empty'):
        validate_question(' \t\n ', 10)
    with pytest.raises(PromptError, match='max_prompt_chars'):
        validate_question('x' * 11, 10)
    assert validate_question('x' * 11, 0) == 'x' * 11   # 0 = no limit


def test_a_prompt_of_control_characters_only_is_empty():
    with pytest.raises(PromptError, match='empty'):
        validate_question('\x01\x02\x1b\x7f\x85', 100)
    # kept; the template drops \x1b
    assert validate_question('\x1b[31mred?', 100) == '\x1b[31mred?'


def test_the_length_bound_comes_before_any_other_work_on_the_text():
    with pytest.raises(PromptError, match='max_prompt_chars'):
        validate_question('\x01' * 3_000_000, 4000)
