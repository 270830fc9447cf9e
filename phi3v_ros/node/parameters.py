"""
Every node parameter in one table: name, default, meaning, range, and whether it is read-only.

ROS-free on purpose: the node declares parameters from this table, the tests check that
config/vision_qa.yaml and the README list exactly these names and defaults.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

from phi3v_ros.core.conversation import FollowUpOptions
from phi3v_ros.core.prompt_queue import BUSY_POLICIES
from phi3v_ros.core.vision_qa import QAOptions
from phi3v_ros.engine.engine import IMAGE_PREPROCESSING, PROVIDERS
from phi3v_ros.engine.generation import GenerationSettings
from phi3v_ros.engine.image_preparation import IMAGE_FORMATS
from phi3v_ros.engine.model_paths import default_model_path
from phi3v_ros.frames.frame_cache import AGE_SOURCES

_QA = QAOptions()
_GEN = GenerationSettings()


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False                     # True: needs a restart (the worker or a topic)
    value_range: Optional[Tuple[Any, Any]] = None   # inclusive (min, max) for numbers
    choices: Tuple[str, ...] = ()               # allowed values for strings
    max_chars: Optional[int] = None             # longest string allowed


PARAMETERS: Tuple[ParameterSpec, ...] = (
    # -- the model and the worker process (read-only: changing them means a new worker) --
    # The default follows provider (see default_for): the CPU folder for cpu, else the CUDA one.
    ParameterSpec('model_path', default_model_path(),
                  'Phi-3-vision ONNX model folder (the one with genai_config.json); default: the '
                  'folder fetch_model writes, CUDA int4 (--variant int4), or with provider cpu '
                  'CPU int4 (--variant cpu)',
                  read_only=True),
    ParameterSpec('provider', 'auto', 'execution provider: auto (CUDA if available), cuda or cpu',
                  read_only=True, choices=PROVIDERS),
    ParameterSpec('device_id', 0, 'CUDA device index', read_only=True, value_range=(0, 64)),
    ParameterSpec('cuda_graph', False,
                  'capture the decoder in a CUDA graph (CUDA only): +33-45 % decode on an H100, '
                  'off until shown to keep greedy output (docs/benchmarks.md, GPU)',
                  read_only=True),
    ParameterSpec('warmup', True,
                  'run one short generation after loading so the first answer is fast',
                  read_only=True),
    ParameterSpec('image_preprocessing', 'fast',
                  "how the model's image inputs are made: fast (by the node's worker, OpenCV "
                  "resampling), exact (by the worker, bit-identical to onnxruntime-genai's "
                  "processor) or processor (the frame encoded to PNG/JPEG for genai's "
                  'processor: 16 crops always; what releases before 0.7 use whatever is set)',
                  read_only=True, choices=IMAGE_PREPROCESSING),
    ParameterSpec('max_image_side', 1344,
                  'image_preprocessing processor only: longest image side encoded for the model '
                  '(0 = as is); it sees at most 16 crops of 336 px, so larger frames only cost '
                  'time', read_only=True, value_range=(0, 8192)),
    ParameterSpec('image_format', 'png',
                  'image_preprocessing processor only: how frames are encoded for the model: png '
                  '(lossless) or jpeg', read_only=True, choices=IMAGE_FORMATS),
    ParameterSpec('stall_timeout', 60.0,
                  'seconds without progress from the worker during a request before it is'
                  ' restarted', read_only=True, value_range=(1.0, 3600.0)),
    ParameterSpec('stream_interval', 0.02,
                  'seconds; streamed pieces that come sooner than this after the last stream '
                  'message are joined into the next one (0 = one message per piece)',
                  read_only=True, value_range=(0.0, 1.0)),
    ParameterSpec('load_timeout', 600.0,
                  'seconds the worker may take to load and warm up the model',
                  read_only=True, value_range=(1.0, 7200.0)),
    # -- topics --
    ParameterSpec('image_topic', 'image', 'camera topic (sensor_msgs/Image)', read_only=True),
    ParameterSpec('image_topics', [],
                  'several cameras: their topics, replacing image_topic; every prompt is '
                  'answered from the latest frame of each, and the model is told which image '
                  'comes from which topic', read_only=True),
    ParameterSpec('use_compressed', False,
                  'subscribe <image_topic>/compressed (sensor_msgs/CompressedImage) instead (each '
                  'of image_topics likewise)', read_only=True),
    ParameterSpec('frame_age_source', 'stamp',
                  "how a frame's age is measured: stamp (its header stamp against the node's "
                  'clock, simulated time under use_sim_time; a zero stamp, or one ahead of the '
                  'clock by more than 0.5 s, falls back to arrival) or arrival (on this machine)',
                  read_only=True, choices=AGE_SOURCES),
    ParameterSpec('image_reliability', 'best_effort',
                  'camera QoS reliability: best_effort or reliable',
                  read_only=True, choices=('best_effort', 'reliable')),
    ParameterSpec('image_qos_depth', 1, 'camera QoS history depth (only the latest frame is used)',
                  read_only=True, value_range=(1, 100)),
    ParameterSpec('prompt_topic', 'prompt', 'questions (std_msgs/String)', read_only=True),
    ParameterSpec('answer_topic', 'answer',
                  'answers (std_msgs/String); streamed pieces go to <answer_topic>/stream',
                  read_only=True),
    ParameterSpec('request_topic', 'request',
                  'requests: one JSON object each (std_msgs/String; README, Requests)',
                  read_only=True),
    ParameterSpec('response_topic', 'response',
                  "responses: one JSON object per request, with the request's id; streamed "
                  'pieces go to <response_topic>/stream', read_only=True),
    ParameterSpec('max_image_pixels', 40_000_000,
                  'frames with more pixels than this are refused before any work', read_only=True,
                  value_range=(1, 400_000_000)),
    ParameterSpec('diagnostics_period', 1.0, 'seconds between /diagnostics messages',
                  read_only=True, value_range=(0.1, 60.0)),
    # -- request policies (can change while running) --
    ParameterSpec('max_image_age', _QA.max_image_age_s,
                  'seconds; a prompt waits for a newer frame when the latest is older'
                  ' (0 = any age)', value_range=(0.0, 3600.0)),
    ParameterSpec('image_wait_timeout', _QA.image_wait_timeout_s,
                  'seconds a prompt waits for a (fresh) frame before the ERROR reply',
                  value_range=(0.0, 600.0)),
    ParameterSpec('engine_wait_timeout', _QA.engine_wait_timeout_s,
                  'seconds a prompt waits for the model to be loaded (or restarted) before the'
                  ' ERROR reply', value_range=(0.0, 7200.0)),
    ParameterSpec('allow_text_only', _QA.allow_text_only,
                  'answer from the text alone when no (fresh) frame is available'),
    # The two bounds of what waiting prompts may hold (any participant on the domain can set
    # them): 100 x 100,000 characters.
    ParameterSpec('max_queue', _QA.max_queue, 'prompts that may wait while the engine is busy',
                  value_range=(1, 100)),
    ParameterSpec('busy_policy', _QA.busy_policy,
                  'when the queue is full: reject the new prompt or drop_oldest waiting one',
                  choices=BUSY_POLICIES),
    ParameterSpec('max_prompt_chars', _QA.max_prompt_chars, 'longer prompts get an ERROR reply',
                  value_range=(1, 100_000)),
    ParameterSpec('history_turns', _QA.history_turns,
                  'earlier question/answer pairs kept as context (0 = every prompt stands alone)',
                  value_range=(0, 100)),
    ParameterSpec('system_prompt', _QA.system_prompt, 'system message put before every question',
                  max_chars=20_000),
    ParameterSpec('follow_up_window', _QA.follow_ups.window_s,
                  'prompt topic: a prompt this many seconds after an answer follows it up, about '
                  "the same frames, in the model's memory (0 = off; requests use follow_ups and "
                  'follows)', value_range=(0.0, 3600.0)),
    ParameterSpec('follow_up_max', _QA.follow_ups.max_follow_ups,
                  'follow-ups one conversation may have (0 = none, for requests too)',
                  value_range=(0, 100)),
    ParameterSpec('follow_up_tokens', _QA.follow_ups.tokens,
                  "tokens kept in the model's KV cache for all of a conversation's follow-ups "
                  '(questions and answers); counted by the memory guard', value_range=(0, 65536)),
    # -- generation (can change while running) --
    ParameterSpec('max_new_tokens', _GEN.max_new_tokens, 'longest answer, in tokens',
                  value_range=(1, 131072)),
    ParameterSpec('do_sample', _GEN.do_sample,
                  'sample (true) or greedy, repeatable decoding (false)'),
    ParameterSpec('temperature', _GEN.temperature, 'sampling temperature (do_sample only)',
                  value_range=(0.01, 5.0)),
    ParameterSpec('top_p', _GEN.top_p, 'nucleus sampling mass (do_sample only)',
                  value_range=(0.01, 1.0)),
    ParameterSpec('top_k', _GEN.top_k, 'sample from the k most likely tokens (do_sample only)',
                  value_range=(1, 1000)),
    ParameterSpec('repetition_penalty', _GEN.repetition_penalty,
                  '1.0 = none; above 1 discourages repeats', value_range=(0.5, 2.0)),
    ParameterSpec('seed', _GEN.seed, 'sampling seed; -1 = random', value_range=(-1, 2**31 - 1)),
    ParameterSpec('max_crops', _GEN.max_crops,
                  'crops of 336 px per image: fewer is faster (fewer prompt tokens, a shorter '
                  "vision pass) with less detail; 16 is the published model's behaviour",
                  value_range=(1, 16)),
)

BY_NAME = {spec.name: spec for spec in PARAMETERS}

# What each parameter type is called in messages.
_TYPE_NAMES = {bool: 'a boolean', int: 'an integer', float: 'a double', str: 'a string',
               list: 'a list of strings'}


def default_for(name: str, values: dict) -> Any:
    """Return a parameter's default given the values already decided (model_path: provider)."""
    if name == 'model_path' and 'provider' in values:
        return default_model_path(values['provider'])
    return BY_NAME[name].default


def type_mismatch(name: str, value: Any) -> Optional[str]:
    """
    Return None if value has the parameter's type, else what is wrong and what to write instead.

    'max_image_age must be a double: write 1.0' for `-p max_image_age:=1`.
    """
    expected = type(BY_NAME[name].default)
    given = type(value)
    if expected is list:    # a string array; an empty one comes as rclpy's typeless []
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return None
        return f'{name} must be a list of strings such as "[front/image, rear/image]", not ' \
               f'{value!r}'
    if given is expected:
        return None
    wanted = f'{name} must be {_TYPE_NAMES[expected]}'
    if expected is float and given is int:
        return f'{wanted}: write {float(value)!r}'
    if expected is int and given is float and value.is_integer():
        return f'{wanted}: write {int(value)}'
    if expected is bool:
        return f'{wanted}: write true or false, not {value!r}'
    if expected is str and given in _TYPE_NAMES:
        return (f"{wanted}, not {_TYPE_NAMES[given]}: quote it, -p \"{name}:='{value}'\"")
    example = {int: ' such as 4', float: ' such as 1.0'}.get(expected, '')
    return f'{wanted}{example}, not {value!r}'


def check_value(name: str, value: Any) -> Optional[str]:
    """None if value is allowed for the parameter, else the reason (ranges, choices)."""
    spec = BY_NAME[name]
    if spec.choices and value not in spec.choices:
        return f'{name} must be one of {", ".join(spec.choices)}, not {value!r}'
    if spec.value_range is not None and not spec.value_range[0] <= value <= spec.value_range[1]:
        return f'{name} must be in [{spec.value_range[0]}, {spec.value_range[1]}], not {value!r}'
    if spec.max_chars is not None and len(value) > spec.max_chars:
        return f'{name} is {len(value)} characters long, more than {spec.max_chars}'
    return None


def qa_options(values: dict) -> QAOptions:
    """Return the request policies and generation settings from parameter values (name: value)."""
    settings = GenerationSettings(
        max_new_tokens=values['max_new_tokens'], do_sample=values['do_sample'],
        temperature=values['temperature'], top_p=values['top_p'], top_k=values['top_k'],
        repetition_penalty=values['repetition_penalty'], seed=values['seed'],
        max_crops=values['max_crops'])
    return QAOptions(
        max_image_age_s=values['max_image_age'], image_wait_timeout_s=values['image_wait_timeout'],
        engine_wait_timeout_s=values['engine_wait_timeout'],
        allow_text_only=values['allow_text_only'], max_queue=values['max_queue'],
        busy_policy=values['busy_policy'], max_prompt_chars=values['max_prompt_chars'],
        history_turns=values['history_turns'], system_prompt=values['system_prompt'],
        settings=settings,
        follow_ups=FollowUpOptions(window_s=values['follow_up_window'],
                                   max_follow_ups=values['follow_up_max'],
                                   tokens=values['follow_up_tokens']))
