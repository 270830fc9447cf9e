"""
Answers constrained to a format, through the real engine on the tiny random model.

The model has no idea of any answer: only the constraint can make one valid, so every answer
being valid over hundreds of varied formats is the constraint at work. Then: choices ranked by
the model's scores agree with guidance; the probabilities; the formats the grammar engine
refuses; and what the releases without guidance answer.
"""
import random

from phi3v_ros.core.answers import AnswerError, check_answer
from phi3v_ros.engine.engine import Engine, EngineConfig
from phi3v_ros.engine.genai_releases import version_tuple
from phi3v_ros.engine.generation import GenerationSettings, Request, StopReason
from phi3v_ros.engine.guidance import has_guidance
from phi3v_test_utils import gradient_image
import pytest

og = pytest.importorskip('onnxruntime_genai')
GUIDANCE = has_guidance(og)
# 0.11.4 aborts on answers with characters written as several byte tokens: ASCII formats there
ASCII_ONLY = version_tuple(og.__version__) < (0, 12)
needs_guidance = pytest.mark.skipif(not GUIDANCE, reason='guidance came in 0.8')
MAX_NEW = 200   # enough for every format below (5 fields of JSON are about 80 tokens)
WORDS = ('red', 'green', 'blue', 'yellow', 'open', 'closed', 'left', 'right', 'up', 'down',
         'cup', 'box', 'door', 'person', 'robot', 'table', 'chair', 'wall', 'floor', 'window',
         'ja', 'nein', 'oui', 'non') + (() if ASCII_ONLY else ('grün', 'größer', 'ñandú', 'café'))
QUESTIONS = ('Is the door open?', 'How many people are there?', 'What colour is the cup?',
             'Which way should the robot turn?', 'Describe the table.', 'Is it safe to go?')
REGEXES = ('[0-9]{1,3}', '(yes|no|maybe)', '[a-z]{2,6}', '[A-Z][a-z]{1,5} [0-9]',
           '(red|green|blue)-[0-9]{2}', '[0-9]{1,4}(\\.[0-9]{1,2})?', 'x{3,5}',
           '(left|right|straight)( then (left|right))?', '#[0-9a-f]{6}', '[01]{8}')
GRAMMARS = ('start: "go" | "stop" | "wait"',
            'start: NUM " " UNIT\nNUM: /[0-9]{1,3}/\nUNIT: "m" | "cm" | "mm"',
            'start: "(" ITEM ("," ITEM)? ("," ITEM)? ")"\nITEM: "a" | "b" | "c"')


def random_schema(rng):
    fields = {}
    for index in range(rng.randint(1, 5)):
        # every field bounded in length (a JSON number's decimals are not: the random model
        # writes them until max_new_tokens, which is then an error response, as it should)
        kind = rng.choice(('boolean', 'integer', 'enum', 'string', 'array', 'fraction'))
        if kind == 'boolean':
            field = {'type': 'boolean'}
        elif kind == 'integer':
            low = rng.randint(-5, 5)
            field = {'type': 'integer', 'minimum': low, 'maximum': low + rng.randint(0, 500)}
        elif kind == 'fraction':
            field = {'type': 'string', 'pattern': '^0\\.[0-9]{1,3}$'}
        elif kind == 'enum':
            field = {'enum': rng.sample(WORDS, rng.randint(1, 4))}
        elif kind == 'string':
            field = {'type': 'string', 'pattern': '^[a-z]{1,6}$'}
        else:
            field = {'type': 'array', 'items': {'enum': rng.sample(WORDS, 3)}, 'maxItems': 3}
        fields[f'f{index}_{kind}'] = field
    return {'type': 'object', 'properties': fields, 'required': sorted(fields),
            'additionalProperties': False}


def random_format(rng):
    kind = rng.choice(('choices', 'choices', 'regex', 'json_schema', 'json_schema',
                       'lark_grammar'))
    if kind == 'choices':
        return kind, tuple(rng.sample(WORDS, rng.randint(2, 8)))
    if kind == 'regex':
        return kind, rng.choice(REGEXES)
    if kind == 'lark_grammar':
        return kind, rng.choice(GRAMMARS)
    return kind, random_schema(rng)


@pytest.fixture(scope='module')
def engine(tiny_model):
    return Engine(EngineConfig(model_path=tiny_model, provider='cpu'))


@pytest.fixture(scope='module')
def ranking(tiny_model):
    return Engine(EngineConfig(model_path=tiny_model, provider='cpu', rank_choices=True))


def ask(engine, answer_format, question='Is the door open?', images=(), max_new=MAX_NEW):
    return engine.generate(Request(prompt=question, images=images, answer_format=answer_format,
                                   settings=GenerationSettings(max_new_tokens=max_new)))


@needs_guidance
def test_hundreds_of_constrained_answers_are_all_valid(engine):
    rng = random.Random(20261206)
    picture = gradient_image(240, 320, seed=3)
    kinds = {}
    for number in range(320):
        kind, spec = random_format(rng)
        images = (picture,) if number % 16 == 0 else ()
        result = ask(engine, (kind, spec), rng.choice(QUESTIONS), images)
        assert result.ok and result.constrained_by == 'guidance', (kind, spec, result.error)
        assert result.stop_reason == StopReason.END_OF_TEXT, (kind, spec, result.text)
        value = check_answer(kind, spec, result.text, complete=True, max_new_tokens=MAX_NEW)
        if kind == 'json_schema':
            assert result.text == result.text.strip() and ': ' not in result.text, \
                'compact JSON: no free whitespace'
            assert set(value) == set(spec['properties'])
        kinds[kind] = kinds.get(kind, 0) + 1
    assert min(kinds.values()) >= 30, kinds


@needs_guidance
def test_ranked_choices_agree_with_guidance_and_give_probabilities(engine, ranking):
    rng = random.Random(5)
    for number in range(60):
        choices = tuple(rng.sample(('yes', 'no', 'maybe', 'red', 'green', 'blue', 'left', 'up')
                                   + (() if ASCII_ONLY else ('café', 'ñandú')), rng.randint(2, 4)))
        if len({c[0] for c in choices}) != len(choices):
            continue
        question = rng.choice(QUESTIONS)
        images = (gradient_image(120, 160, seed=number),) if number % 5 == 0 else ()
        guided = ask(engine, ('choices', choices), question, images)
        ranked = ask(ranking, ('choices', choices), question, images)
        assert guided.ok and ranked.ok and ranked.constrained_by == 'ranking', ranked.error
        assert guided.text == ranked.text, (choices, question)
        probabilities = dict(guided.choice_probabilities)
        assert set(probabilities) == set(choices)
        assert abs(sum(probabilities.values()) - 1.0) < 1e-6
        assert dict(ranked.choice_probabilities) == pytest.approx(probabilities, abs=1e-6)


@needs_guidance
def test_choices_that_start_alike_are_answered_without_probabilities(engine, ranking):
    result = ask(engine, ('choices', ('blue', 'black', 'brown')))
    assert result.ok and result.text in ('blue', 'black', 'brown')
    assert result.choice_probabilities == ()
    refused = ask(ranking, ('choices', ('blue', 'black')))
    assert not refused.ok and 'two choices start with the same character' in refused.error


@needs_guidance
@pytest.mark.parametrize('kind,spec,problem', [
    ('regex', '(unbalanced', 'unclosed group'),
    ('json_schema', {'type': 5}, 'type must be a string'),
    ('json_schema', {'$ref': '#/nowhere'}, "'/nowhere' does not exist"),
    ('lark_grammar', 'start: foo', 'unknown name'),
    ('regex', 'a{1000000}', 'too many expressions constructed'),    # refused while answering
])
def test_a_format_the_grammar_engine_refuses_is_that_requests_error(engine, kind, spec, problem):
    result = ask(engine, (kind, spec))
    assert not result.ok and (result.error.startswith(f'the {kind} format was refused')
                              or result.error.startswith('the grammar engine stopped'))
    assert problem in result.error and '<state>' not in result.error
    assert ask(engine, ('choices', ('yes', 'no'))).ok, 'the engine goes on'


@needs_guidance
def test_an_answer_cut_off_or_unmatched_is_never_called_valid(engine):
    cut = ask(engine, ('json_schema', {'type': 'object', 'properties': {
        'n': {'type': 'integer'}}, 'required': ['n']}), max_new=4)
    assert cut.stop_reason == StopReason.LENGTH
    with pytest.raises(AnswerError, match='cut off at max_new_tokens'):
        check_answer('json_schema', {}, cut.text, complete=False, max_new_tokens=4)
    nothing = ask(engine, ('regex', '[^\\s\\S]'))     # can match nothing: whatever comes out
    if nothing.ok:
        with pytest.raises(AnswerError, match='does not match the regex'):
            check_answer('regex', '[^\\s\\S]', nothing.text, complete=True, max_new_tokens=60)


@pytest.mark.skipif(not (GUIDANCE and ASCII_ONLY), reason='0.8-0.11 only')
def test_releases_that_abort_on_non_ascii_answers_refuse_such_formats(engine):
    result = ask(engine, ('choices', ('café', 'thé')))
    assert not result.ok and 'aborts on constrained answers with characters outside ASCII' in \
        result.error


@needs_guidance
def test_a_build_without_guidance_is_found_out_and_choices_are_ranked(tiny_model, monkeypatch):
    # What a wheel built without --use_guidance does (0.9.2's CreateGuidanceLogitsProcessor
    # without USE_GUIDANCE): set_guidance is there and the constraint is ignored, with a warning.
    monkeypatch.setattr(og.GeneratorParams, 'set_guidance', lambda self, *arguments: None)
    said = []
    engine = Engine(EngineConfig(model_path=tiny_model, provider='cpu'), log=said.append)
    choices = ask(engine, ('choices', ('yes', 'no')))
    assert choices.ok and choices.constrained_by == 'ranking' and choices.text in ('yes', 'no')
    assert any('was built without guidance' in line for line in said), said
    regex = ask(engine, ('regex', '[0-9]'))
    assert not regex.ok and '(this build has no guidance)' in regex.error


def test_the_check_of_each_kind():
    assert check_answer('choices', ('yes', 'no'), 'no', True, 8) == 'no'
    with pytest.raises(AnswerError, match='not one of the choices'):
        check_answer('choices', ('yes', 'no'), 'nope', True, 8)
    assert check_answer('regex', '[0-9]+', '42', True, 8) == '42'
    with pytest.raises(AnswerError, match='does not match'):
        check_answer('regex', '[0-9]+', '4x', True, 8)
    schema = {'type': 'object', 'properties': {'n': {'type': 'integer', 'maximum': 3}}}
    assert check_answer('json_schema', schema, '{"n":2}', True, 8) == {'n': 2}
    with pytest.raises(AnswerError, match='not JSON'):
        check_answer('json_schema', schema, '{"n":', True, 8)
    pytest.importorskip('jsonschema')
    with pytest.raises(AnswerError, match='does not fit the schema'):
        check_answer('json_schema', schema, '{"n":7}', True, 8)


@pytest.mark.skipif(GUIDANCE, reason='for the releases without guidance (0.4-0.7)')
def test_without_guidance_a_format_says_which_release_it_needs(engine):
    result = ask(engine, ('regex', '[0-9]{2}'))
    assert not result.ok and 'cannot constrain answers (guidance came in 0.8)' in result.error
    choices = ask(engine, ('choices', ('yes', 'no')))
    # ranked where the release gives the logits (0.5-0.7), else the sentence says what to get
    assert choices.ok or 'constrained answers need 0.8 or later' in choices.error, choices.error
