"""
Plain data passed between the node, the engine client, the worker process and the engine.

Everything here is picklable and ROS-free, so it crosses the process boundary unchanged.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import List, Optional, Tuple


class StopReason(str, enum.Enum):
    END_OF_TEXT = 'end_of_text'   # the model produced its end token
    LENGTH = 'length'             # max_new_tokens (or the model's context length) reached
    CANCELLED = 'cancelled'       # cancel() between tokens, or a request dropped from the queue
    ERROR = 'error'               # bad request, engine failure or worker crash: see Result.error


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings of one request. do_sample=False means greedy (repeatable) decoding."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int = -1                # -1: let onnxruntime-genai pick; >= 0: repeatable sampling
    # crops of 336 px per image (1-16; 16 is the published model's); fewer: faster, less detail
    max_crops: int = 16

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        checks = [
            (self.max_new_tokens >= 1, 'max_new_tokens must be >= 1'),
            (self.temperature > 0.0, 'temperature must be > 0'),
            (0.0 < self.top_p <= 1.0, 'top_p must be in (0, 1]'),
            (self.top_k >= 1, 'top_k must be >= 1'),
            (self.repetition_penalty > 0.0, 'repetition_penalty must be > 0'),
            (self.seed >= -1, 'seed must be -1 (random) or >= 0'),
            (type(self.max_crops) is int and 1 <= self.max_crops <= 16,
             'max_crops must be an integer in 1..16'),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class Turn:
    """One earlier question/answer pair of the conversation (text only)."""

    question: str
    answer: str


@dataclasses.dataclass
class Request:
    """
    One question for the engine, about images (RGB uint8 arrays (H, W, 3)), or text only.

    cameras, when given, names each image's camera (its topic) for the model, in the same order;
    missing_cameras names the cameras that have no current image, which the model is told.
    answer_format, when given, is (kind, spec): the answer must be one of the choices (a tuple of
    strings), match a regex or a Lark grammar (a string), or be JSON of a schema (a dict); see
    guidance.py.
    """

    prompt: str
    # numpy.ndarrays; typed loosely so this module needs no numpy
    images: Tuple[object, ...] = ()
    cameras: Tuple[str, ...] = ()
    missing_cameras: Tuple[str, ...] = ()
    settings: GenerationSettings = dataclasses.field(default_factory=GenerationSettings)
    system_prompt: str = ''
    history: Tuple[Turn, ...] = ()
    answer_format: Optional[Tuple[str, object]] = None
    # Follow-ups (engine.py, "Conversations"): keep_tokens > 0 keeps this answer's sequence (image
    # included) in the worker for follow-ups, with that many tokens more in its KV cache; a
    # follow_up continues the kept sequence with this question alone (where it cannot, the
    # result is an error whose fresh_because says why, and nothing is generated).
    keep_tokens: int = 0
    follow_up: bool = False


@dataclasses.dataclass
class Result:
    """The outcome of one request: the full text and what it cost."""

    text: str = ''
    stop_reason: StopReason = StopReason.ERROR
    # one readable sentence when stop_reason is ERROR (or why cancelled)
    error: str = ''
    image_tokens: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    max_length: int = 0                # the KV-cache length this request was given
    time_to_first_token_s: float = 0.0  # processor + set_inputs (vision + prefill) + first token
    decode_tokens_per_s: float = 0.0    # tokens after the first, over the time after the first
    total_s: float = 0.0
    # (height, width) of each frame the inputs came from, in image order
    image_sizes: Tuple[Tuple[int, int], ...] = ()
    # crops through the vision encoder, all images together (global views included)
    image_crops: int = 0
    # the model's image inputs built from the frame (own tensors), or bounding + PNG/JPEG encoding
    # for genai's processor, in the worker
    image_prepare_s: float = 0.0
    # extra timings (name, s)
    stages: List[Tuple[str, float]] = dataclasses.field(default_factory=list)
    # with answer_format: 'guidance' (the grammar engine) or 'ranking' (choices by the model's
    # scores, where the release has no guidance); and each choice's probability where the
    # choices part, when it could be read
    constrained_by: str = ''
    choice_probabilities: Tuple[Tuple[str, float], ...] = ()
    # conversations: this answer continued the kept sequence; its own sequence is kept for a
    # follow-up (tokens left in its KV cache); why a follow-up could not continue
    continued: bool = False
    kept_tokens_left: int = 0
    fresh_because: str = ''

    @property
    def ok(self) -> bool:
        return self.stop_reason in (StopReason.END_OF_TEXT, StopReason.LENGTH)
