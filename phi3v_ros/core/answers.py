"""
The check an answer passes before a response says ok: it is of the format the request asked for.

The grammar engine makes the model write the format; this checks what came out, so that an
answer cut off by max_new_tokens, or one the engine let through in an edge case (a regex that
can match nothing), is an error response that says so, never an invalid value called ok.

- choices: the text is one of them; the value is that choice;
- regex: the whole text matches (Python's re; a pattern Python cannot read is the grammar
  engine's word alone); the value is the text;
- json_schema: the text is one JSON value, valid under the schema (jsonschema, where installed);
  the value is the parsed JSON;
- lark_grammar: the text ended with the model's end token; the value is the text.
"""
from __future__ import annotations

import json
import re
from typing import Any


class AnswerError(ValueError):
    """The answer is not of the format asked for; the message says how."""


def check_answer(kind: str, spec: Any, text: str, complete: bool, max_new_tokens: int) -> Any:
    """
    Return the value of an answer of the format (kind, spec), or raise AnswerError.

    complete is False when the answer ended at max_new_tokens rather than at the end token.
    """
    if not complete:
        raise AnswerError(f'the answer was cut off at max_new_tokens ({max_new_tokens}) before '
                          f'it was a complete {kind.replace("_", " ")} answer: raise '
                          f'max_new_tokens, or ask for something shorter')
    if kind == 'choices':
        if text not in spec:
            raise AnswerError(f'the answer {text[:80]!r} is not one of the choices')
        return text
    if kind == 'regex':
        try:
            pattern = re.compile(spec)
        except (re.error, RecursionError, OverflowError):
            return text      # a pattern only the grammar engine reads: its word is final
        if pattern.fullmatch(text) is None:
            raise AnswerError(f'the answer {text[:80]!r} does not match the regex')
        return text
    if kind == 'json_schema':
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise AnswerError(f'the answer is not JSON ({exc})') from None
        _validate(value, spec)
        return value
    if kind == 'lark_grammar':
        return text
    raise AnswerError(f'unknown format {kind!r}')


def _validate(value: Any, schema: Any) -> None:
    try:
        import jsonschema
    except ImportError:     # the grammar engine made it; without jsonschema it is not re-checked
        return
    try:
        validator = jsonschema.validators.validator_for(schema)
        validator(schema).validate(value)
    except jsonschema.ValidationError as exc:
        raise AnswerError(f'the answer does not fit the schema: {exc.message[:200]}') from None
    except (jsonschema.SchemaError, RecursionError, TypeError, ValueError) as exc:
        raise AnswerError(f'the schema cannot check the answer: {str(exc)[:200]}') from None
