"""
The request interface: JSON objects in std_msgs/String, one per request and one per response.

A request on the request topic, its one response on the response topic, streamed pieces on
<response_topic>/stream tagged with the request's id.

The package cannot define message types of its own (see README, Requests), so the formats are
JSON with a schema each, shipped in interface/schemas/ (request.schema.json,
response.schema.json, stream.schema.json) and checked here by hand: this module must stay light
(a client imports it), and a request comes from the network, so every field is bounded before
anything is done with it.

A request:   {"id": "door-1", "question": "Is the door open?",
              "format": {"choices": ["yes", "no"]}, "cameras": ["/head/image_raw"],
              "max_new_tokens": 8, "max_crops": 4, "max_image_age": 1.0}
Follow-ups:  {"id": "t-1", "question": "What is on the table?", "follow_ups": true}, then
             {"id": "t-2", "question": "Which one is red?", "follows": "t-1"}
A cancel:    {"id": "door-1", "cancel": true}
A response:  {"id": "door-1", "status": "ok", "text": "yes", "value": "yes", "error": null, ...}
A piece:     {"id": "door-1", "piece": "ye"}
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, Optional, Tuple

# Bounds on what one request may hold (a hostile request must not cost more than this to read,
# compile or answer); README, Requests, lists them.
MAX_REQUEST_BYTES = 64 * 1024
MAX_ID_CHARS = 128
MAX_CHOICES = 64
MAX_CHOICE_CHARS = 200
MAX_REGEX_CHARS = 1000
MAX_SCHEMA_BYTES = 16 * 1024       # the JSON schema, serialised compactly
MAX_GRAMMAR_CHARS = 16 * 1024
MAX_CAMERAS = 16
MAX_JSON_DEPTH = 32                # nesting of the whole request, schema included
FORMAT_KINDS = ('choices', 'regex', 'json_schema', 'lark_grammar')
REQUEST_FIELDS = ('id', 'question', 'format', 'cameras', 'max_new_tokens', 'max_crops',
                  'max_image_age', 'follow_ups', 'follows', 'cancel')
STATUS_OK, STATUS_ERROR = 'ok', 'error'


class RequestError(ValueError):
    """A request that cannot be taken: the message says why, request_id its id if it had one."""

    def __init__(self, message: str, request_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclasses.dataclass(frozen=True)
class AnswerFormat:
    """What the answer must be: kind (one of FORMAT_KINDS) and spec (list, pattern or schema)."""

    kind: str
    spec: Any       # tuple of str (choices), str (regex, lark_grammar), dict (json_schema)


@dataclasses.dataclass(frozen=True)
class QARequest:
    id: str  # noqa: A003 - the client's id, a field of the wire format
    question: str
    format: Optional[AnswerFormat] = None  # noqa: A003 - a field of the wire format
    cameras: Tuple[str, ...] = ()           # () = every camera of the node
    max_new_tokens: Optional[int] = None    # None = the node's parameter (also the ceiling)
    max_crops: Optional[int] = None
    max_image_age: Optional[float] = None
    # conversations: keep this answer (its frames, the model's memory of them) for follow-ups;
    # or continue the conversation whose latest answer is that of request `follows`
    follow_ups: bool = False
    follows: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class CancelRequest:
    id: str  # noqa: A003 - the id of the request to cancel


def _too_deep(value: Any, limit: int, level: int = 0) -> bool:
    if level > limit:
        return True
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) \
        else ()
    return any(_too_deep(item, limit, level + 1) for item in items)


def _type_name(value: Any) -> str:
    return {dict: 'an object', list: 'a list', str: 'a string', bool: 'true or false',
            type(None): 'null'}.get(type(value), 'a number')


def _integer(body: dict, name: str, low: int, high: int, request_id: str) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise RequestError(f'{name} must be an integer, not {_type_name(value)}', request_id)
    if not low <= value <= high:
        raise RequestError(f'{name} must be in [{low}, {high}], not {value}', request_id)
    return value


def _string(value: Any, what: str, limit: int, request_id: Optional[str]) -> str:
    if not isinstance(value, str):
        raise RequestError(f'{what} must be a string, not {_type_name(value)}', request_id)
    if len(value) > limit:
        raise RequestError(f'{what} is {len(value)} characters long, more than {limit}',
                           request_id)
    return value


def parse_format(value: Any, request_id: Optional[str] = None) -> AnswerFormat:
    """Return the AnswerFormat of a request's "format" object, or raise RequestError saying why."""
    if not isinstance(value, dict) or len(value) != 1:
        raise RequestError('format must be an object with exactly one of '
                           + ', '.join(FORMAT_KINDS), request_id)
    (kind, spec), = value.items()
    if kind == 'choices':
        if not isinstance(spec, list) or not 1 <= len(spec) <= MAX_CHOICES:
            raise RequestError(f'format.choices must be a list of 1 to {MAX_CHOICES} strings',
                               request_id)
        choices = tuple(_string(c, 'each choice', MAX_CHOICE_CHARS, request_id) for c in spec)
        if any(not c for c in choices) or len(set(choices)) != len(choices):
            raise RequestError('format.choices must be distinct, non-empty strings', request_id)
        return AnswerFormat(kind, choices)
    if kind == 'regex':
        pattern = _string(spec, 'format.regex', MAX_REGEX_CHARS, request_id)
        if not pattern:
            raise RequestError('format.regex is empty', request_id)
        return AnswerFormat(kind, pattern)
    if kind == 'lark_grammar':
        grammar = _string(spec, 'format.lark_grammar', MAX_GRAMMAR_CHARS, request_id)
        if not grammar.strip():
            raise RequestError('format.lark_grammar is empty', request_id)
        return AnswerFormat(kind, grammar)
    if kind == 'json_schema':
        if not isinstance(spec, (dict, bool)):
            raise RequestError('format.json_schema must be a JSON schema (an object)',
                               request_id)
        size = len(json.dumps(spec, separators=(',', ':')))
        if size > MAX_SCHEMA_BYTES:
            raise RequestError(f'format.json_schema is {size} bytes, more than '
                               f'{MAX_SCHEMA_BYTES}', request_id)
        return AnswerFormat(kind, spec)
    raise RequestError(f'unknown format {kind!r}: one of {", ".join(FORMAT_KINDS)}', request_id)


def parse_request(data: str):
    """
    Return the QARequest or CancelRequest a request message carries.

    Raises RequestError (with the id when there was a usable one) for anything else: not JSON,
    not an object, too large or deep, a missing, empty or over-long id, unknown fields, fields of
    the wrong type or out of range.
    """
    if len(data) > MAX_REQUEST_BYTES:     # characters; a cheap bound before any parsing
        raise RequestError(f'the request is {len(data)} characters long, more than '
                           f'{MAX_REQUEST_BYTES}')
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f'the request is not JSON ({exc})') from None
    if not isinstance(body, dict):
        raise RequestError(f'the request must be a JSON object, not {_type_name(body)}')
    raw_id = body.get('id')
    request_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_ID_CHARS else None
    if 'id' not in body:
        raise RequestError('the request has no id')
    if request_id is None:
        raise RequestError(f'id must be a string of 1 to {MAX_ID_CHARS} characters')
    if _too_deep(body, MAX_JSON_DEPTH):
        raise RequestError(f'the request is nested more than {MAX_JSON_DEPTH} levels deep',
                           request_id)
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestError(f'unknown field(s) {", ".join(unknown)}; a request has '
                           + ', '.join(REQUEST_FIELDS), request_id)
    if 'cancel' in body:
        if body['cancel'] is not True or set(body) != {'id', 'cancel'}:
            raise RequestError('a cancel is {"id": ..., "cancel": true} and nothing else',
                               request_id)
        return CancelRequest(request_id)
    if 'question' not in body:
        raise RequestError('the request has no question', request_id)
    question = _string(body['question'], 'question', MAX_REQUEST_BYTES, request_id)
    answer_format = parse_format(body['format'], request_id) if body.get('format') is not None \
        else None
    cameras = body.get('cameras', [])
    if not isinstance(cameras, list) or len(cameras) > MAX_CAMERAS:
        raise RequestError(f'cameras must be a list of at most {MAX_CAMERAS} topic names',
                           request_id)
    cameras = tuple(_string(c, 'each camera', 256, request_id) for c in cameras)
    if len(set(cameras)) != len(cameras):
        raise RequestError('cameras names a camera twice', request_id)
    max_age = body.get('max_image_age')
    if max_age is not None:
        if type(max_age) not in (int, float) or not math.isfinite(max_age) or \
                not 0 <= max_age <= 3600:
            raise RequestError('max_image_age must be a number of seconds in [0, 3600]',
                               request_id)
        max_age = float(max_age)
    follow_ups = body.get('follow_ups', False)
    if type(follow_ups) is not bool:
        raise RequestError(f'follow_ups must be true or false, not {_type_name(follow_ups)}',
                           request_id)
    follows = body.get('follows')
    if follows is not None:
        follows = _string(follows, 'follows', MAX_ID_CHARS, request_id)
        if not follows:
            raise RequestError('follows must be the id of an earlier request', request_id)
    if answer_format is not None and (follow_ups or follows is not None):
        raise RequestError('a request with a format cannot open or follow a conversation '
                           '(follow_ups, follows): the model writes formats only as a new '
                           'question', request_id)
    return QARequest(
        id=request_id, question=question, format=answer_format, cameras=cameras,
        max_new_tokens=_integer(body, 'max_new_tokens', 1, 131072, request_id),
        max_crops=_integer(body, 'max_crops', 1, 16, request_id), max_image_age=max_age,
        follow_ups=follow_ups, follows=follows)


def request_json(request: QARequest) -> str:
    """Return the request message for a QARequest (what a client sends)."""
    body: Dict[str, Any] = {'id': request.id, 'question': request.question}
    if request.format is not None:
        spec = request.format.spec
        body['format'] = {request.format.kind: list(spec) if isinstance(spec, tuple) else spec}
    if request.cameras:
        body['cameras'] = list(request.cameras)
    for name in ('max_new_tokens', 'max_crops', 'max_image_age', 'follows'):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.follow_ups:
        body['follow_ups'] = True
    return json.dumps(body)


def cancel_json(request_id: str) -> str:
    return json.dumps({'id': request_id, 'cancel': True})


def response_json(request_id: Optional[str], status: str, text: str = '', value: Any = None,
                  error: Optional[str] = None, **details: Any) -> str:
    """
    Return a response message: id, status, text, value, error, then details.

    details are the response schema's other fields (frames, missing_cameras, choice_probabilities,
    prompt_tokens, image_tokens, generated_tokens, time_to_first_token_s, total_s, stop_reason).
    """
    body = {'id': request_id, 'status': status, 'text': text, 'value': value, 'error': error}
    body.update(details)
    return json.dumps(body, ensure_ascii=False)


def piece_json(request_id: str, piece: str) -> str:
    return json.dumps({'id': request_id, 'piece': piece}, ensure_ascii=False)


def parse_json_object(data: str) -> Optional[dict]:
    """Return the JSON object a response or piece message carries, None when it is not one."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None
