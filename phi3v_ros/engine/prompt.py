"""The Phi-3 chat prompt: user text validation and the exact template the model was trained on."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from phi3v_ros.base.errors import PromptError
from phi3v_ros.base.text import printable
from phi3v_ros.engine.generation import Turn

IMAGE_TAG = '<|image_{}|>'

# Any `<|name|>` in user text would be read by the processor as a chat or image tag: an injected
# `<|image_1|>` adds an image slot (and fails the request), an injected `<|end|>` ends the turn.
# Breaking the `<|` opener keeps the characters visible to the model without their meaning.
_TAG_OPENER = re.compile(r'<\s*\|')
# The tokenizer's other special tokens (Phi-3's tokenizer.json: <s> = 1 = BOS, </s> = 2 = EOS,
# <unk> = 0) are matched in text too: broken up the same way.
_SPECIAL_TOKEN = re.compile(r'<(/?s|unk)>')


def neutralize(text: str) -> str:
    """
    Return text that cannot change the prompt's structure.

    No chat tags, no special tokens, no control characters (they mean nothing to the model).
    """
    return _SPECIAL_TOKEN.sub(r'< \1>', _TAG_OPENER.sub('< |', printable(text)))


def validate_question(text: str, max_chars: int) -> str:
    """
    Return the question stripped of surrounding whitespace.

    Raise PromptError saying why if it is empty or too long.
    """
    question = text.strip()
    if max_chars > 0 and len(question) > max_chars:
        raise PromptError(
            f'the prompt is {len(question)} characters long, more than max_prompt_chars '
            f'({max_chars})')
    if not question or not neutralize(question).strip():   # nothing left once control chars go
        raise PromptError('the prompt is empty')
    return question


def image_tags(images: int, cameras: Sequence[str] = (), missing: Sequence[str] = ()) -> str:
    """
    Return the current turn's image tags, each introduced by its camera when cameras name them.

    One unnamed image is the bare tag, as the model card's prompts have it; with cameras (one name
    per image), 'Image 1, from camera /head/image_raw:' precedes each tag, so that a question
    can name a camera and the model knows which image that is. Each missing camera gets a line
    saying it has no current image, so that the model does not answer about it from the others.
    """
    if cameras and len(cameras) != images:
        raise ValueError(f'{images} images but {len(cameras)} camera names')
    lines = []
    for number in range(1, images + 1):
        if cameras:
            lines.append(f'Image {number}, from camera {neutralize(cameras[number - 1])}:\n')
        lines.append(IMAGE_TAG.format(number) + '\n')
    for camera in missing:
        lines.append(f'Camera {neutralize(camera)}: no current image.\n')
    return ''.join(lines)


def build_chat_prompt(question: str, *, images: int = 0, cameras: Sequence[str] = (),
                      missing_cameras: Sequence[str] = (), system_prompt: str = '',
                      history: Iterable[Turn] = ()) -> str:
    """
    Build the prompt in the Phi-3 chat format.

    The image tags go into the current turn only (earlier turns are text).
    """
    parts = []
    if system_prompt.strip():
        parts.append(f'<|system|>\n{neutralize(system_prompt.strip())}<|end|>\n')
    for turn in history:
        parts.append(f'<|user|>\n{neutralize(turn.question)}<|end|>\n')
        parts.append(f'<|assistant|>\n{neutralize(turn.answer)}<|end|>\n')
    tags = image_tags(images, cameras, missing_cameras)
    parts.append(f'<|user|>\n{tags}{neutralize(question)}<|end|>\n<|assistant|>\n')
    return ''.join(parts)


def follow_up_turn(question: str, answer_ended: bool) -> str:
    """
    Return what a follow-up appends to a kept conversation, in the same chat format.

    The text after the previous answer: its <|end|> unless the model wrote it (answer_ended),
    then the question's turn, so that the whole sequence reads as build_chat_prompt would write
    the conversation with the earlier turn in it.
    """
    return (('' if answer_ended else '<|end|>')
            + f'\n<|user|>\n{neutralize(question)}<|end|>\n<|assistant|>\n')
