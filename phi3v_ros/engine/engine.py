"""
Phi-3-vision through onnxruntime-genai: load a model folder, answer one request at a time.

Plain Python, no ROS. It runs inside the worker process (see worker.py): onnxruntime-genai holds
the GIL through the whole prefill and some of its failures end the process they happen in.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import sys
import sysconfig
import tempfile
import time
from typing import Callable, Optional

import numpy as np

from phi3v_ros.base.errors import EngineError, ModelLoadError
from phi3v_ros.engine import graph_decoder, model_paths
from phi3v_ros.engine.genai_releases import (check_genai_release, folder_layout_error,
                                             listed_provider, provider_without_config,
                                             version_tuple)
from phi3v_ros.engine.generation import GenerationSettings, Request, Result, StopReason
from phi3v_ros.engine.guidance import (ChoiceScores, grammar_for, has_guidance,
                                       logits_of_last_step, token_texts)
from phi3v_ros.engine.hd_transform import crop_grid, MAX_CROPS, prepare_image
from phi3v_ros.engine.image_preparation import bound_longest_side, encode_image
from phi3v_ros.engine.memory_guard import MemoryGuard
from phi3v_ros.engine.model_inputs import InputBuilder, prompt_token_ids, takes_own_inputs
from phi3v_ros.engine.prompt import build_chat_prompt, follow_up_turn

PROVIDERS = ('auto', 'cuda', 'cpu')
# fast / exact: the engine builds the model's inputs from the RGB frame itself (model_inputs.py;
# exact gives the processor's pixel values bit for bit, fast is OpenCV's resampling); processor:
# the frame is encoded to PNG/JPEG and onnxruntime-genai's multimodal processor does it (always 16
# crops; the only way on releases before 0.7, chosen there by itself).
IMAGE_PREPROCESSING = ('fast', 'exact', 'processor')


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    model_path: str
    # auto: CUDA when this onnxruntime-genai build has it, else CPU
    provider: str = 'auto'
    device_id: int = 0
    image_preprocessing: str = 'fast'   # one of IMAGE_PREPROCESSING
    # processor path only: longest side of the image encoded for it (0 = as is), and how
    max_image_side: int = 1344
    image_format: str = 'png'         # png (lossless) or jpeg
    jpeg_quality: int = 95
    # onnxruntime-genai provider option enable_cuda_graph (CUDA only)
    cuda_graph: bool = False
    # the worker joins pieces closer together than this (piece_coalescer)
    stream_interval_s: float = 0.02
    # answer choices by rank even where the release has guidance (tests and benchmarks compare)
    rank_choices: bool = False


def import_genai():
    """
    Import onnxruntime_genai, or raise ModelLoadError saying what is wrong and what to do.

    It tells "not installed" (no module onnxruntime_genai for this Python) from "installed but
    cannot be loaded" (its import fails, typically on a shared library of another CUDA/JetPack).
    """
    try:
        import onnxruntime_genai
    except ModuleNotFoundError as exc:
        if exc.name != 'onnxruntime_genai':   # a part of the package or a dependency is missing
            raise ModelLoadError(_genai_cannot_load(exc)) from exc
        raise ModelLoadError(_not_installed()) from exc
    except (ImportError, OSError) as exc:
        raise ModelLoadError(_genai_cannot_load(exc)) from exc
    return onnxruntime_genai


def _not_installed() -> str:
    """Say how to install onnxruntime-genai for the Python the node runs (sys.executable)."""
    python = sys.executable
    in_venv = sys.prefix != sys.base_prefix
    stdlib = sysconfig.get_path('stdlib') or ''
    externally_managed = not in_venv and os.path.exists(os.path.join(stdlib, 'EXTERNALLY-MANAGED'))
    if externally_managed:   # PEP 668 (Ubuntu 24.04): pip into this Python is refused
        how = (f'{python} refuses pip (PEP 668, externally managed): install it into a virtual '
               'environment made with `python3 -m venv --system-site-packages`, and build the '
               'workspace from that activated environment with `python3 -m colcon build` (README: '
               'Jazzy or Kilted)')
    else:
        how = (f'install it with `{python} -m pip install onnxruntime-genai` (CPU) or '
               '`... onnxruntime-genai-cuda` (desktop CUDA), or on a Jetson build the CUDA wheel '
               'with `ros2 run phi3v_ros build_genai_wheel --install` (docs/jetson.md)')
    message = f'onnxruntime-genai is not installed for this Python ({python}): {how}'
    if not in_venv:
        active = os.environ.get('VIRTUAL_ENV')
        message += ('. If you installed it into a virtual environment'
                    + (f' ({active} is active)' if active else '')
                    + ", the node does not run that environment's Python: its executables name "
                    'the Python that ran colcon; rebuild the workspace with `python3 -m colcon '
                    'build` from the activated environment')
    return message


_SHARED_LIBRARY = re.compile(r'\b(lib[\w+-]+(?:\.[\w+-]+)*?\.so(?:\.\d+)*)')


def _genai_cannot_load(exc: BaseException) -> str:
    try:
        spec = importlib.util.find_spec('onnxruntime_genai')
    except (ImportError, ValueError):
        spec = None
    where = ''
    if spec is not None and spec.origin:
        where = f' ({os.path.dirname(spec.origin)})'
    text = ' '.join(str(exc).split()) or '(no message)'
    library = _SHARED_LIBRARY.search(text)
    what = f'the library {library.group(1)} is missing' if library else 'its import fails'
    return (f'onnxruntime-genai is installed{where} but cannot be loaded: {what} '
            f'({type(exc).__name__}: {text}). That usually means a wheel built for another '
            'CUDA/JetPack than this machine has: on a Jetson build one for this JetPack with '
            '`ros2 run phi3v_ros build_genai_wheel --install` (docs/jetson.md); on a desktop '
            'install the onnxruntime-genai-cuda build for this CUDA version')


def resolve_provider(requested: str, cuda_available: bool) -> str:
    """Map the provider parameter to the one to use, or raise ModelLoadError."""
    if requested not in PROVIDERS:
        raise ModelLoadError(f'provider must be one of {", ".join(PROVIDERS)}, not {requested!r}')
    if requested == 'cuda' and not cuda_available:
        raise ModelLoadError(
            'provider is "cuda" but this onnxruntime-genai build has no CUDA support '
            '(og.is_cuda_available() is False): install the CUDA build '
            '(`ros2 run phi3v_ros build_genai_wheel --install` on a Jetson, '
            '`pip install onnxruntime-genai-cuda` on a desktop) or set provider to cpu or auto')
    if requested == 'auto':
        return 'cuda' if cuda_available else 'cpu'
    return requested


def read_genai_config(model_path: str, genai_version: str = 'unknown') -> dict:
    """
    Read genai_config.json, turning every way a folder can be wrong into a ModelLoadError.

    genai_version is the installed onnxruntime-genai's: the folder layout it reads depends on it.
    """
    if not os.path.exists(model_path):
        raise ModelLoadError(f'model_path {model_path!r} does not exist{_fetch_hint(model_path)}')
    if not os.path.isdir(model_path):
        raise ModelLoadError(f'model_path {model_path!r} is a file, not a model folder')
    config_file = os.path.join(model_path, 'genai_config.json')
    if not os.path.exists(config_file):
        below = model_paths.model_folders_below(model_path)
        if below:
            raise ModelLoadError(
                f'{model_path!r} has no genai_config.json, but a model folder below it has: did '
                f'you mean model_path:={" or ".join(below)}? (model_path is the folder that holds '
                'genai_config.json)')
        raise ModelLoadError(
            f'{model_path!r} has no genai_config.json: it is not an onnxruntime-genai model folder'
            f'{_fetch_hint(model_path)}')
    pointers = model_paths.lfs_pointer_files(model_path)
    if pointers:
        raise ModelLoadError(
            f"these files in {model_path!r} are git-lfs pointers, not the model's data: "
            f'{", ".join(pointers)} (cloned without git-lfs): run `git lfs pull` in the clone, '
            f'or download the folder with `{model_paths.fetch_command(model_path)}`')
    try:
        with open(config_file, encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f'{config_file} cannot be read as JSON: {exc}') from None
    model_section = config.get('model', {}) if isinstance(config, dict) else None
    model_type = model_section.get('type') if isinstance(model_section, dict) else None
    if model_type != 'phi3v':
        raise ModelLoadError(
            f'{config_file} describes a model of type {model_type!r}; phi3v_ros needs a '
            'Phi-3-vision model (type "phi3v")')
    layout_error = folder_layout_error(model_path, model_section, genai_version)
    if layout_error:
        raise ModelLoadError(layout_error)
    return config


def _fetch_hint(model_path: str) -> str:
    return '; ' + model_paths.missing_model_hint(model_path)


# How llguidance's errors start when they come while answering (the mask or a token it refused)
GUIDANCE_ERROR = re.compile(r'^(Error computing mask|Error committing tokens|Error creating '
                            r'grammar)|<state>')


@dataclasses.dataclass
class _Kept:
    """A generator kept for a follow-up: its KV cache holds `length` of `max_length` tokens."""

    generator: object
    max_length: int
    length: int
    ended: bool      # the sequence ends with the model's end token


class Engine:
    """One loaded Phi-3-vision model. Not thread-safe: one request at a time."""

    def __init__(self, config: EngineConfig, log: Callable[[str], None] = lambda message: None):
        self.config = config
        self._log = log
        self._og = import_genai()
        check_genai_release(self._og)
        self.genai_version = getattr(self._og, '__version__', 'unknown')
        genai_config = read_genai_config(config.model_path, self.genai_version)
        model_section = genai_config['model']
        self.context_length = int(model_section.get('context_length', 4096))
        # a decoder prepared for CUDA graphs (graph_decoder.py) runs this many tokens, no more
        self.graph_bound = graph_decoder.bound(config.model_path)
        eos = model_section.get('eos_token_id', [])
        self.eos_token_ids = frozenset(eos if isinstance(eos, list) else [eos])
        # before the model loads (minutes on a Jetson): a wrong value fails at once
        self.image_preprocessing = self._choose_preprocessing(config.image_preprocessing, log)
        cuda_available = bool(self._og.is_cuda_available())
        self.provider = resolve_provider(config.provider, cuda_available)
        # og.Config came in 0.5: 0.4 runs the provider genai_config.json lists
        has_config = hasattr(self._og, 'Config')
        if not has_config:
            listed = listed_provider(model_section.get('decoder', {}))
            self.provider = resolve_provider(
                provider_without_config(config, self.provider, listed, self.genai_version),
                cuda_available)
        if config.provider == 'auto':
            why = 'CUDA is available' if self.provider == 'cuda' else 'this build has no CUDA'
            if not has_config:
                why = f'genai_config.json lists it; onnxruntime-genai {self.genai_version}'
            log(f'provider auto: using {self.provider} ({why})')
        # 0.4-0.6 raise onnxruntime's own errors as og.OrtException, an Exception only
        ort_error = getattr(self._og, 'OrtException', None)
        self._genai_errors = (RuntimeError,) + (
            (ort_error,) if isinstance(ort_error, type) and issubclass(ort_error, Exception)
            else ())
        start = time.perf_counter()
        try:
            if has_config:
                og_config = self._og.Config(config.model_path)
                og_config.clear_providers()
                if self.provider == 'cuda':
                    og_config.append_provider('cuda')
                    og_config.set_provider_option('cuda', 'device_id', str(config.device_id))
                    og_config.set_provider_option(
                        'cuda', 'enable_cuda_graph', '1' if config.cuda_graph else '0')
                self._model = self._og.Model(og_config)
            else:
                self._model = self._og.Model(config.model_path)
            self._processor = self._model.create_multimodal_processor()
            # Before 0.7 the processor's NamedTensors cannot be read from Python: the prompt is
            # counted with the model's tokenizer instead.
            self._inputs_readable = hasattr(self._og.NamedTensors, 'keys')
            self._tokenizer = self._og.Tokenizer(self._model)
        except self._genai_errors as exc:
            raise ModelLoadError(
                f'onnxruntime-genai could not load {config.model_path!r}: {exc}') from exc
        self.load_s = time.perf_counter() - start
        self._inputs = InputBuilder(self._og, self._tokenizer)
        self._own_image_inputs_worked = False
        # 0.9 moved set_inputs from GeneratorParams to Generator; 0.4-0.8 only have the former.
        self._generator_takes_inputs = hasattr(self._og.Generator, 'set_inputs')
        self._open_bytes = getattr(self._og.Images, 'open_bytes', None)
        # constrained answers: the grammar engine where this release has it (see guidance.py);
        # rank_choices answers choices by rank even where it has (to compare the two)
        self.guidance = has_guidance(self._og) and not config.rank_choices
        # A build without guidance has set_guidance too, and ignores it (a warning in its log):
        # the first formatted request finds out with a one-token answer (_guidance_is_built).
        self._guidance_checked = False
        # 0.11.4 aborts the process (an assertion in its guidance) once a constrained answer
        # holds a character written as several byte tokens (seen: 'é' in a JSON enum); 0.18
        # does not. Older releases are kept to formats written in ASCII.
        self._ascii_formats_only = version_tuple(self.genai_version) < (0, 12)
        self._token_texts = None     # of tokenizer.json, read at the first choices request
        # the sequence kept for a follow-up (see "Conversations" below), or None
        self._kept: Optional[_Kept] = None
        # follow-ups: append_tokens (0.6 and later) and get_logits (see _continue)
        self._can_append = all(hasattr(self._og.Generator, name)
                               for name in ('append_tokens', 'get_logits'))
        self.memory_guard = MemoryGuard.for_model(model_section.get('decoder', {}),
                                                  self.provider, config.device_id)

    def _choose_preprocessing(self, requested: str, log: Callable[[str], None]) -> str:
        if requested not in IMAGE_PREPROCESSING:
            raise ModelLoadError(f'image_preprocessing must be one of '
                                 f'{", ".join(IMAGE_PREPROCESSING)}, not {requested!r}')
        if requested != 'processor' and not takes_own_inputs(self._og):
            log(f'image_preprocessing {requested}: onnxruntime-genai {self.genai_version} cannot '
                'take inputs built outside its processor (NamedTensors from numpy came in 0.7): '
                'using its processor, with 16 crops per image whatever max_crops says')
            return 'processor'
        return requested

    def generate(self, request: Request, on_piece: Optional[Callable[[str], None]] = None,
                 should_stop: Callable[[], bool] = lambda: False) -> Result:
        """
        Answer one request, streaming text pieces to on_piece; never raises for a bad request.

        should_stop is polled between tokens; when it returns True the request ends as CANCELLED.
        """
        start = time.perf_counter()
        result = Result()
        try:
            self._generate(request, result, start, on_piece, should_stop)
        except (EngineError, ValueError) + self._genai_errors as exc:
            result.stop_reason = StopReason.ERROR
            result.error = str(exc)
            if result.constrained_by == 'guidance' and not isinstance(exc, EngineError) and \
                    GUIDANCE_ERROR.search(result.error):
                # llguidance's errors carry its whole state: their first line says it
                result.error = ('the grammar engine stopped the answer: '
                                + result.error.strip().splitlines()[0])
        result.total_s = time.perf_counter() - start
        return result

    def _processor_images(self, images, result: Result) -> object:
        bounded = [bound_longest_side(image, self.config.max_image_side) for image in images]
        result.image_sizes = tuple(tuple(image.shape[:2]) for image in bounded)
        # the processor pads every image to 17 crops whatever its size
        result.image_crops = (MAX_CROPS + 1) * len(bounded)
        encoded = [encode_image(image, self.config.image_format, self.config.jpeg_quality)
                   for image in bounded]
        try:
            if self._open_bytes is not None:
                return self._open_bytes(*encoded)
            # Releases before open_bytes only read files: hand them the same self-encoded bytes.
            suffix = '.png' if self.config.image_format == 'png' else '.jpg'
            with contextlib.ExitStack() as files:
                names = []
                for data in encoded:
                    f = files.enter_context(tempfile.NamedTemporaryFile(suffix=suffix))
                    f.write(data)
                    f.flush()
                    names.append(f.name)
                return self._og.Images.open(*names)
        except self._genai_errors as exc:
            if len(encoded) > 1 and 'multiple images' in str(exc):   # 0.4: "Loading multiple..."
                raise EngineError(
                    f'onnxruntime-genai {self.genai_version} cannot take several images in one '
                    f'prompt ({exc}): several cameras (image_topics) need 0.5 or later') from exc
            raise

    def _generate(self, request: Request, result: Result, start: float,
                  on_piece: Optional[Callable[[str], None]],
                  should_stop: Callable[[], bool]) -> None:
        settings = request.settings
        settings.validate()
        kept, self._kept = self._kept, None     # every request takes the kept sequence out
        if request.follow_up:
            follow_ids, why = self._follow_up_ids(kept, request)
            if why is None:
                self._continue(kept, follow_ids, request, result, start, on_piece, should_stop)
                return
            # not answered here: the caller asks again as a new question, with current frames
            result.fresh_because = why
            raise EngineError(f'the conversation cannot be continued: {why}')
        del kept      # its KV cache is freed before this request's is allocated
        guide, scores = self._answer_format(request.answer_format, result)
        prompt = build_chat_prompt(request.prompt, images=len(request.images),
                                   cameras=request.cameras,
                                   missing_cameras=request.missing_cameras,
                                   system_prompt=request.system_prompt, history=request.history)
        prepared = []    # hd_transform.ImageInputs, one per image (own preprocessing)
        if self.image_preprocessing == 'processor':
            images = None
            if request.images:
                images = self._processor_images(request.images, result)
                result.image_prepare_s = time.perf_counter() - start
            inputs = self._processor(prompt, images=images)
            result.prompt_tokens, result.image_tokens = self._count_prompt(
                inputs, prompt, result.image_sizes)
        else:
            for image in request.images:
                try:
                    prepared.append(prepare_image(image, settings.max_crops,
                                                  exact=self.image_preprocessing == 'exact'))
                except Exception as exc:   # noqa: BLE001 - numpy, OpenCV: one bad frame
                    raise EngineError(f'the image could not be prepared for the model '
                                      f'({type(exc).__name__}: {exc})') from exc
            if prepared:
                result.image_sizes = tuple(tuple(image.shape[:2]) for image in request.images)
                result.image_crops = sum(int(one.pixel_values.shape[0]) for one in prepared)
                result.image_prepare_s = time.perf_counter() - start
            inputs, result.prompt_tokens, result.image_tokens = self._inputs.build(prompt,
                                                                                   prepared)
        if self.graph_bound is not None and \
                result.prompt_tokens + settings.max_new_tokens > self.graph_bound:
            raise EngineError(
                f'with cuda_graph on, the decoder takes at most {self.graph_bound} tokens, prompt '
                f'and answer together (the range of its short rotary factors): this prompt is '
                f'{result.prompt_tokens} tokens and max_new_tokens {settings.max_new_tokens}. '
                'Ask with fewer crops (max_crops) or cameras or a lower max_new_tokens, or set '
                'cuda_graph false')
        if result.prompt_tokens >= self.context_length:
            raise EngineError(
                f'the prompt is {result.prompt_tokens} tokens long, the model takes at most '
                f'{self.context_length - 1} before answering: shorten it or lower history_turns')
        # The KV cache is allocated for max_length up front: size it for this request only, and
        # the follow-ups it is kept for.
        keep = request.keep_tokens if self._can_append and guide is None and scores is None \
            else 0
        result.max_length = min(result.prompt_tokens + settings.max_new_tokens + keep,
                                self.context_length, self.graph_bound or self.context_length)
        # An answer whose cache does not fit gets a sentence, not the OOM killer.
        self.memory_guard.check(result.max_length)
        search = self._search_options(settings, result.max_length)
        try:
            generator = self._start_adapting_pixels(inputs, search, prompt, prepared, guide)
        except self._genai_errors as exc:
            if not prepared or self._own_image_inputs_worked or \
                    not self._inputs.refuses_inputs(exc):
                raise     # this prompt's failure only (out of memory, a CUDA error, ...)
            # The model refused the first image inputs built here for their shape or type, where
            # genai's processor may not (a vision graph needing what only the processor gives):
            # use it from now on.
            del inputs
            self._log(f'image_preprocessing {self.image_preprocessing}: the model refused the '
                      f'image inputs built by phi3v_ros ({" ".join(str(exc).split())}); using '
                      "onnxruntime-genai's processor from now on (16 crops per image)")
            self.image_preprocessing = 'processor'
            self._generate(request, result, start, on_piece, should_stop)
            return
        if prepared:
            self._own_image_inputs_worked = True
        try:
            if not self._generator_takes_inputs and not self._inputs_readable:
                result.prompt_tokens = len(generator.get_sequence(0))   # as the generator holds it
            if result.constrained_by == 'ranking':
                self._rank_choices(generator, scores, result, start, on_piece)
            else:
                self._decode_loop(generator, result, start, on_piece, should_stop, scores,
                                  settings.max_new_tokens)
                if keep:
                    self._keep(generator, result)
        finally:
            del generator   # holds the KV cache (and on CUDA a captured graph), unless kept

    # -- Conversations ---------------------------------------------------------------------------
    # A request with keep_tokens keeps its generator after the answer: the prompt, the image
    # tokens and the answer stay in its KV cache, sized for keep_tokens more. A follow_up request
    # appends only its own turn to that sequence (append_tokens, 0.6 and later; rewind_to is
    # refused for phi3v) and decodes, so it sees the earlier images and exchange and prefills
    # only its own tokens. Any other request, an error or a cancel drops the kept sequence; a
    # follow-up that cannot continue is not answered (fresh_because says why): its caller asks
    # it anew, with current frames.

    def end_conversation(self) -> bool:
        """Drop the kept sequence (its KV cache); True if there was one."""
        kept, self._kept = self._kept, None
        return kept is not None

    @property
    def conversation_open(self) -> bool:
        return self._kept is not None

    def conversation_sequence(self) -> list:
        """Return the kept sequence's token ids (image slots as -k), or [] when none is kept."""
        kept = self._kept
        return [] if kept is None else [int(t) for t in kept.generator.get_sequence(0)]

    def _follow_up_ids(self, kept: Optional['_Kept'], request: Request):
        """Return (the follow-up turn's token ids, None), or (None, why it cannot continue)."""
        if not self._can_append:
            return None, (f'onnxruntime-genai {self.genai_version} cannot continue a sequence '
                          '(append_tokens and get_logits came in 0.6)')
        if kept is None:
            return None, ('no conversation is kept in the worker (it ended there, or the '
                          'worker was restarted)')
        if request.answer_format is not None:
            return None, 'an answer format does not continue a conversation'
        ids = prompt_token_ids(self._tokenizer.encode,
                               follow_up_turn(request.prompt, kept.ended), ())
        left = kept.max_length - kept.length
        needed = int(ids.shape[1]) + request.settings.max_new_tokens
        if needed > left:
            return None, (f'its token budget is used up ({left} tokens left, this follow-up '
                          f'needs {needed} with max_new_tokens)')
        return ids, None

    def _continue(self, kept: '_Kept', ids, request: Request, result: Result, start: float,
                  on_piece: Optional[Callable[[str], None]],
                  should_stop: Callable[[], bool]) -> None:
        """Answer a follow-up on the kept sequence; keep it again if there is room."""
        generator = kept.generator
        result.continued = True
        result.prompt_tokens = int(ids.shape[1])
        result.max_length = kept.max_length
        try:
            # onnxruntime-genai runs the model on a generated token only when the next logits are
            # asked for; append_tokens does not, and the appended turn would attend to an empty
            # slot where the answer's last token belongs (0.18: logits off by up to 2.5; with
            # past_present_share_buffer false it fails). get_logits runs it.
            generator.get_logits()
            generator.append_tokens(ids[0])          # the follow-up's own prefill, nothing more
            self._decode_loop(generator, result, start, on_piece, should_stop, None,
                              request.settings.max_new_tokens)
            self._keep(generator, result)       # result.max_length is the kept one
        finally:
            del generator, kept

    def _keep(self, generator, result: Result) -> None:
        """Keep a generator whose answer came whole or to max_new_tokens, if room is left."""
        if not result.ok:
            return
        sequence = generator.get_sequence(0)
        result.kept_tokens_left = max(0, result.max_length - len(sequence))
        if result.kept_tokens_left > 0:
            # 0.18 leaves the end token it stopped on out of the sequence: look, do not assume
            self._kept = _Kept(generator, result.max_length, len(sequence),
                               ended=int(sequence[-1]) in self.eos_token_ids)

    def _answer_format(self, answer_format, result: Result):
        """
        Return (guidance type and data or None, ChoiceScores or None) for a request's format.

        A format the grammar engine refuses (a bad schema, regex or grammar), or one this release
        cannot constrain, is the request's EngineError here, before any image work.
        """
        if answer_format is None:
            return None, None
        if self.guidance and not self._guidance_checked:
            self._guidance_checked = True
            if not self._guidance_is_built():
                self.guidance = False
                self._log(f'onnxruntime-genai {self.genai_version} was built without guidance: '
                          'constrained answers are refused, choices are ranked (docs/jetson.md)')
        kind, spec = answer_format
        scores = None
        if kind == 'choices':
            if self._token_texts is None:
                try:
                    self._token_texts = token_texts(
                        os.path.join(self.config.model_path, 'tokenizer.json'))
                except (OSError, ValueError, AttributeError, TypeError) as exc:
                    self._log(f'tokenizer.json unreadable ({exc}): no choice probabilities')
                    self._token_texts = {}
            scores = ChoiceScores(self._token_texts, spec)
        if self.guidance:
            guide = grammar_for(kind, spec)
            written = spec if isinstance(spec, str) else json.dumps(spec, ensure_ascii=False)
            if self._ascii_formats_only and not written.isascii():
                raise EngineError(f'onnxruntime-genai {self.genai_version} aborts on constrained '
                                  'answers with characters outside ASCII (fixed by 0.18): write '
                                  f'the {kind} format in ASCII, or use 0.18')
            try:    # the grammar is made with a generator: one of 16 tokens, a KV cache of nothing
                params = self._og.GeneratorParams(self._model)
                params.set_search_options(max_length=16)
                params.set_guidance(*guide)
                self._og.Generator(self._model, params)     # made and dropped
            except self._genai_errors as exc:
                raise EngineError(f'the {kind} format was refused: '
                                  f'{" ".join(str(exc).split())[:500]}') from None
            result.constrained_by = 'guidance'
            return guide, scores
        why = (f'onnxruntime-genai {self.genai_version} cannot constrain answers '
               + ('(guidance came in 0.8)' if not has_guidance(self._og) else
                  '(rank_choices is set)' if self.config.rank_choices else
                  '(this build has no guidance)'))
        if kind != 'choices':
            raise EngineError(f'{why}: {kind} needs a release built with guidance (0.8 or later; '
                              'a source build needs Rust: see docs/jetson.md)')
        if scores.owners is None:
            raise EngineError(f"{why}: choices are then ranked by the model's scores of the "
                              f"answer's first token, which cannot tell these apart "
                              f'({scores.why_not})')
        result.constrained_by = 'ranking'
        return None, scores

    def _guidance_is_built(self) -> bool:
        """Return True when a one-token answer constrained to 'Q' is 'Q' (guidance applied)."""
        probe = Request(prompt='Answer.', answer_format=('regex', 'Q'),
                        settings=GenerationSettings(max_new_tokens=1))
        result = Result()
        try:
            self._generate(probe, result, time.perf_counter(), None, lambda: False)
        except (EngineError, ValueError) + self._genai_errors:
            return True     # not a build without guidance: the request will say what is wrong
        return result.text == 'Q'

    def _rank_choices(self, generator, scores: ChoiceScores, result: Result, start: float,
                      on_piece: Optional[Callable[[str], None]]) -> None:
        """Answer choices by the model's scores of their first tokens (no guidance)."""
        if hasattr(generator, 'compute_logits'):     # releases before 0.6: the prefill runs here
            generator.compute_logits()
        logits = logits_of_last_step(generator)
        if logits is None:
            raise EngineError(f'onnxruntime-genai {self.genai_version} has no guidance and '
                              'cannot give the logits choices are ranked by: constrained answers '
                              'need 0.8 or later, built with guidance (docs/jetson.md)')
        result.time_to_first_token_s = time.perf_counter() - start
        result.choice_probabilities = tuple(scores.probabilities(logits).items())
        result.text = scores.best(logits)
        result.generated_tokens = len(self._tokenizer.encode(result.text))
        result.stop_reason = StopReason.END_OF_TEXT
        if on_piece is not None:
            on_piece(result.text)

    def _start_adapting_pixels(self, inputs, search: dict, prompt: str, images: list,
                               guide: Optional[tuple] = None):
        """
        Start the generator; adapt the pixel values once to what the vision graph declares.

        An fp16 vision graph needs float16 pixel values (nothing casts NamedTensors), and a graph
        with a fixed crop count (the processor's 17) needs zero crops appended; set_inputs says
        which, and what worked is kept for the next requests.
        """
        dtype, pad_to = self._inputs.pixel_dtype, self._inputs.pad_crops_to
        attempt = [inputs]   # a list, so that a failed attempt's tensors can be let go
        del inputs
        for _ in range(3):   # at most one change of each kind
            try:
                generator = self._start_generator(attempt[0], search, guide)
            except self._genai_errors as exc:
                fixed = self._inputs.fixed_crop_count(exc) if images else None
                if images and dtype == np.float32 and self._inputs.wants_float16(exc):
                    dtype = np.float16
                elif fixed is not None and pad_to is None:
                    pad_to = fixed
                else:
                    raise
                attempt[0] = None
                attempt[0] = self._inputs.build(prompt, images, pixel_dtype=dtype,
                                                pad_crops_to=pad_to)[0]
                continue
            self._inputs.pixel_dtype, self._inputs.pad_crops_to = dtype, pad_to
            return generator
        raise EngineError('the vision graph refused the image inputs')   # not reached

    @staticmethod
    def _search_options(settings, max_length: int) -> dict:
        search = {'max_length': max_length, 'do_sample': settings.do_sample}
        if settings.repetition_penalty != 1.0:
            search['repetition_penalty'] = settings.repetition_penalty
        if settings.do_sample:
            search.update(temperature=settings.temperature, top_p=settings.top_p,
                          top_k=settings.top_k)
            if settings.seed >= 0:
                search['random_seed'] = settings.seed
        return search

    def _start_generator(self, inputs, search: dict, guide: Optional[tuple] = None):
        """Return a generator with the inputs set: the vision encoder and the prefill run here."""
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(**search)
        if guide is not None:
            params.set_guidance(*guide)
        if not self._generator_takes_inputs:
            params.set_inputs(inputs)
        generator = self._og.Generator(self._model, params)
        self.memory_guard.allocated(search['max_length'])
        if self._generator_takes_inputs:
            try:
                generator.set_inputs(inputs)
            except BaseException:
                del generator
                raise
        return generator

    def _count_prompt(self, inputs, prompt: str, image_sizes: tuple) -> tuple:
        """Return (prompt tokens, image tokens) of the processor's output ``inputs``."""
        if self._inputs_readable:
            image_tokens = 0
            if image_sizes:
                image_tokens = int(inputs['num_image_tokens'].as_numpy().sum())
            return int(inputs['input_ids'].as_numpy().shape[-1]), image_tokens
        # 0.4-0.6 hide them: the ids the processor built, counted by building them the same way
        per_image = [crop_grid(*size).image_tokens for size in image_sizes]
        input_ids = prompt_token_ids(self._tokenizer.encode, prompt, per_image)
        return int(input_ids.shape[1]), sum(per_image)

    def _decode_loop(self, generator, result: Result, start: float,
                     on_piece: Optional[Callable[[str], None]],
                     should_stop: Callable[[], bool],
                     scores: Optional[ChoiceScores] = None,
                     max_new_tokens: Optional[int] = None) -> None:
        stream = self._processor.create_stream()
        pieces = []
        tokens = []
        first_token_at = None
        needs_compute_logits = hasattr(generator, 'compute_logits')   # releases before 0.6
        stop_reason = StopReason.LENGTH
        # max_length ends an answer at max_new_tokens, except in a sequence kept for follow-ups
        while not generator.is_done() and (max_new_tokens is None
                                           or result.generated_tokens < max_new_tokens):
            if should_stop():
                stop_reason = StopReason.CANCELLED
                result.error = 'cancelled'
                break
            if needs_compute_logits:
                generator.compute_logits()
            if scores is not None and scores.owners is not None and not tokens:
                logits = logits_of_last_step(generator)   # the answer's first token: how sure
                if logits is not None:
                    result.choice_probabilities = tuple(scores.probabilities(logits).items())
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            tokens.append(token)
            if first_token_at is None:
                first_token_at = time.perf_counter()
                result.time_to_first_token_s = first_token_at - start
            if token in self.eos_token_ids:
                stop_reason = StopReason.END_OF_TEXT
                break
            result.generated_tokens += 1
            piece = stream.decode(token)
            if piece:
                pieces.append(piece)
                if on_piece is not None:
                    on_piece(piece)
        if first_token_at is not None and result.generated_tokens > 1:
            decode_s = time.perf_counter() - first_token_at
            result.decode_tokens_per_s = ((result.generated_tokens - 1) / decode_s
                                          if decode_s > 0 else 0.0)
        result.text = ''.join(pieces)
        result.stop_reason = stop_reason
