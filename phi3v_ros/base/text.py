"""Text that came in a message, made harmless where it is shown (a terminal, a log, a reply)."""
from __future__ import annotations

import re
from typing import Any

# C0/C1 control characters other than newline and tab: terminal escapes, carriage returns.
_CONTROL_CHARS = re.compile('[\x00-\x08\x0b-\x1f\x7f-\x9f]')


def printable(text: str) -> str:
    """Return text without control characters (newlines and tabs stay)."""
    return _CONTROL_CHARS.sub('', text)


def short_repr(value: Any, limit: int = 40) -> str:
    """Return repr(value) (control characters escaped), cut to limit characters."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not change the exception type
        text = '<unprintable %s>' % type(value).__name__
    return text if len(text) <= limit else text[:limit - 3] + '...'


def first_line(text: str, limit: int = 200) -> str:
    """Return the first line of a message (onnxruntime's run on), cut to limit characters."""
    lines = text.strip().splitlines()
    line = lines[0] if lines else ''
    return line if len(line) <= limit else line[:limit - 3] + '...'
