"""The request interface's JSON: what a request holds, every refusal, the shipped schemas."""
import json
import pathlib

from phi3v_ros.interface import requests as R
import pytest

SCHEMAS = pathlib.Path(R.__file__).parent / 'schemas'


def test_a_full_request_is_read_and_written_back():
    body = {'id': 'door-1', 'question': 'Is the door open?', 'format': {'choices': ['yes', 'no']},
            'cameras': ['/head/image_raw'], 'max_new_tokens': 8, 'max_crops': 4,
            'max_image_age': 1.5}
    request = R.parse_request(json.dumps(body))
    assert request == R.QARequest('door-1', 'Is the door open?',
                                  R.AnswerFormat('choices', ('yes', 'no')), ('/head/image_raw',),
                                  8, 4, 1.5)
    assert json.loads(R.request_json(request)) == body
    assert R.parse_request('{"id": "x", "question": "q"}') == R.QARequest('x', 'q')
    assert R.parse_request('{"id": "x", "cancel": true}') == R.CancelRequest('x')


@pytest.mark.parametrize('kind,spec', [
    ('regex', '[0-9]{1,3}'), ('lark_grammar', 'start: "a" | "b"'),
    ('json_schema', {'type': 'object', 'properties': {'n': {'type': 'integer'}}}),
])
def test_each_format_kind_is_read(kind, spec):
    request = R.parse_request(json.dumps({'id': 'f', 'question': 'q', 'format': {kind: spec}}))
    assert request.format == R.AnswerFormat(kind, spec)


DEEP = {'id': 'deep', 'question': 'q', 'format': {'json_schema': {}}}
node = DEEP['format']['json_schema']
for _ in range(40):
    node['items'] = {}
    node = node['items']


@pytest.mark.parametrize('data,reason,request_id', [
    ('not json', 'the request is not JSON', None),
    ('[1, 2]', 'must be a JSON object, not a list', None),
    ('"text"', 'must be a JSON object, not a string', None),
    ('{"question": "q"}', 'has no id', None),
    ('{"id": "", "question": "q"}', 'id must be a string of 1 to 128', None),
    ('{"id": 7, "question": "q"}', 'id must be a string', None),
    (json.dumps({'id': 'x' * 129, 'question': 'q'}), 'id must be a string of 1 to 128', None),
    ('{"id": "a", "question": "q", "colour": "red"}', 'unknown field(s) colour', 'a'),
    ('{"id": "a"}', 'has no question', 'a'),
    ('{"id": "a", "question": 5}', 'question must be a string, not a number', 'a'),
    ('{"id": "a", "question": "q", "max_new_tokens": "8"}', 'must be an integer', 'a'),
    ('{"id": "a", "question": "q", "max_new_tokens": 0}', 'max_new_tokens must be in', 'a'),
    ('{"id": "a", "question": "q", "max_new_tokens": true}', 'must be an integer', 'a'),
    ('{"id": "a", "question": "q", "max_crops": 17}', 'max_crops must be in [1, 16]', 'a'),
    ('{"id": "a", "question": "q", "max_image_age": -1}', 'max_image_age must be', 'a'),
    ('{"id": "a", "question": "q", "cameras": "/head"}', 'cameras must be a list', 'a'),
    ('{"id": "a", "question": "q", "cameras": ["/a", "/a"]}', 'names a camera twice', 'a'),
    ('{"id": "a", "question": "q", "format": "yes/no"}', 'format must be an object', 'a'),
    ('{"id": "a", "question": "q", "format": {"regex": "a", "choices": ["b"]}}',
     'exactly one of', 'a'),
    ('{"id": "a", "question": "q", "format": {"grammar": "x"}}', "unknown format 'grammar'", 'a'),
    ('{"id": "a", "question": "q", "format": {"choices": []}}', 'list of 1 to 64', 'a'),
    ('{"id": "a", "question": "q", "format": {"choices": ["y", "y"]}}', 'distinct', 'a'),
    ('{"id": "a", "question": "q", "format": {"choices": ["y", ""]}}', 'non-empty', 'a'),
    ('{"id": "a", "question": "q", "format": {"choices": ["y", 3]}}', 'must be a string', 'a'),
    (json.dumps({'id': 'a', 'question': 'q', 'format': {'choices': list(map(str, range(65)))}}),
     'list of 1 to 64', 'a'),
    (json.dumps({'id': 'a', 'question': 'q', 'format': {'choices': ['y' * 201]}}),
     'more than 200', 'a'),
    (json.dumps({'id': 'a', 'question': 'q', 'format': {'regex': 'a' * 1001}}),
     'format.regex is 1001 characters long, more than 1000', 'a'),
    ('{"id": "a", "question": "q", "format": {"regex": ""}}', 'format.regex is empty', 'a'),
    ('{"id": "a", "question": "q", "format": {"json_schema": "object"}}',
     'must be a JSON schema', 'a'),
    (json.dumps({'id': 'a', 'question': 'q', 'format': {'json_schema': {'enum': ['x' * 20000]}}}),
     'more than 16384', 'a'),
    ('{"id": "a", "cancel": true, "question": "q"}', 'a cancel is', 'a'),
    ('{"id": "a", "cancel": false}', 'a cancel is', 'a'),
    (json.dumps(DEEP), 'nested more than 32 levels', 'deep'),
    ('[' * 30000 + ']' * 30000, 'the request is not JSON', None),
    (json.dumps({'id': 'a', 'question': 'q' * 70000}), 'more than 65536', None),
])
def test_every_malformed_request_is_refused_saying_why(data, reason, request_id):
    with pytest.raises(R.RequestError) as refused:
        R.parse_request(data)
    assert reason in str(refused.value)
    assert refused.value.request_id == request_id


def test_the_shipped_schemas_accept_what_the_code_writes_and_refuse_what_it_refuses():
    jsonschema = pytest.importorskip('jsonschema')
    request_schema = json.loads((SCHEMAS / 'request.schema.json').read_text())
    response_schema = json.loads((SCHEMAS / 'response.schema.json').read_text())
    stream_schema = json.loads((SCHEMAS / 'stream.schema.json').read_text())
    for schema in (request_schema, response_schema, stream_schema):
        jsonschema.validators.validator_for(schema).check_schema(schema)
    good = R.QARequest('r1', 'q', R.AnswerFormat('json_schema', {'type': 'integer'}), ('/a',),
                       8, 2, 0.5)
    jsonschema.validate(json.loads(R.request_json(good)), request_schema)
    jsonschema.validate(json.loads(R.cancel_json('r1')), request_schema)
    for refused in ('{"question": "q"}', '{"id": "a", "question": "q", "colour": 1}',
                    '{"id": "a", "question": "q", "max_crops": 17}',
                    '{"id": "a", "question": "q", "format": {"choices": []}}'):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(json.loads(refused), request_schema)
    response = json.loads(R.response_json(
        'r1', R.STATUS_OK, 'yes', 'yes', None, frames=[
            {'camera': '/a', 'stamp': 1.5, 'frame_id': 'cam', 'age_s': 0.1,
             'age_source': 'stamp'}], missing_cameras=[],
        choice_probabilities={'yes': 0.9, 'no': 0.1},
        constrained_by='guidance', prompt_tokens=10, image_tokens=4, generated_tokens=2,
        time_to_first_token_s=0.1, total_s=0.2, stop_reason='end_of_text'))
    jsonschema.validate(response, response_schema)
    jsonschema.validate(json.loads(R.piece_json('r1', 'ye')), stream_schema)
