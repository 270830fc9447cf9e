"""
The worker process: owns the Engine, answers one request at a time, streams pieces back.

worker_launch.py starts it (`python -m phi3v_ros.engine.worker_launch FD`) and hands it to
worker_main.

It runs apart from the ROS node because onnxruntime-genai holds the GIL through the whole prefill
(seconds on a Jetson) and because some of its failures (libjpeg's exit(1), an out-of-memory abort)
end the process they happen in. Messages on the pipe are tuples whose first item names them:

parent -> worker: ('start', EngineConfig, warmup) first, then
                  ('generate', id, WorkItem) | ('cancel', id) | ('end_conversation',)
                  | ('shutdown',)
worker -> parent: ('log', text) | ('ready', info) | ('load_failed', reason)
                  | ('piece', id, text) | ('result', id, Result)

cuda_graph is fail-safe here: a model that does not load or warm up with a graph is loaded again
without one, and info['cuda_graph'] says why ('off: ...'; the parent does not ask again).
"""
from __future__ import annotations

import dataclasses
import gc
import os
import queue
import threading
from typing import Optional, Tuple

from phi3v_ros.base.errors import ModelLoadError, Phi3vRosError
from phi3v_ros.base.text import first_line
from phi3v_ros.engine import graph_decoder
from phi3v_ros.engine.engine import (Engine, EngineConfig, import_genai, read_genai_config,
                                     resolve_provider)
from phi3v_ros.engine.generation import GenerationSettings, Request, Result, StopReason, Turn
from phi3v_ros.engine.piece_coalescer import PieceCoalescer
from phi3v_ros.frames.frame_transport import FrameReceiver, FrameRef

WARMUP_PROMPT = 'Describe the image.'
WARMUP_IMAGE_SIDE = 336


@dataclasses.dataclass
class WorkItem:
    """
    A Request as it crosses the pipe.

    Image k waits in shared memory (frames[k], see frame_transport.py), or, where no shared
    memory can be had, travels in the message itself (pixels[k], an RGB uint8 array); the other
    of the two is None. cameras names the images' cameras for the model (Request.cameras).
    """

    prompt: str
    settings: GenerationSettings
    system_prompt: str = ''
    history: Tuple[Turn, ...] = ()
    frames: Tuple[Optional[FrameRef], ...] = ()
    pixels: Tuple[Optional[object], ...] = ()
    cameras: Tuple[str, ...] = ()
    missing_cameras: Tuple[str, ...] = ()
    answer_format: Optional[Tuple[str, object]] = None
    keep_tokens: int = 0          # Request's: keep the sequence for follow-ups
    follow_up: bool = False       # Request's: continue the kept sequence


def _warm_up(engine: Engine) -> None:
    # the worker has numpy anyway (image preparation); imported late to start fast
    import numpy as np
    image = np.full((WARMUP_IMAGE_SIDE, WARMUP_IMAGE_SIDE, 3), 127, np.uint8)
    result = engine.generate(Request(prompt=WARMUP_PROMPT, images=(image,),
                                     settings=GenerationSettings(max_new_tokens=2)))
    if result.stop_reason == StopReason.ERROR:
        # A folder whose files load but do not fit together (a genai_config.json that does not
        # match the graphs, a processor_config.json without its transform) fails every request the
        # same way: report it as a load failure instead of a ready engine that answers only errors.
        raise ModelLoadError(f'the model in {engine.config.model_path!r} loaded but cannot answer '
                             f'(warm-up request failed: {result.error})')


def _start_engine(config: EngineConfig, warmup: bool,
                  log) -> Tuple[Optional[Engine], Optional[str]]:
    """Load the model (and warm it up): (engine, None), or (None, why it failed)."""
    try:
        engine = Engine(config, log=log)
        # with a CUDA graph the warm-up always runs: the graph is captured there, so that a
        # capture that fails is found before the first answer depends on it
        if warmup or config.cuda_graph:
            _warm_up(engine)
        return engine, None
    except Phi3vRosError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - anything at load time must reach the parent as text
        return None, f'{type(exc).__name__}: {exc}'


class _Inbox:
    """Reads the pipe on its own thread so that a cancel arrives while the main thread decodes."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self.work: 'queue.Queue' = queue.Queue()
        self._cancelled = set()
        self._shutting_down = False
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name='phi3v-worker-inbox', daemon=True).start()

    def is_cancelled(self, request_id: int) -> bool:
        with self._lock:
            return self._shutting_down or request_id in self._cancelled

    def forget(self, request_id: int) -> None:
        """Drop the cancels of this request and of earlier ones (a cancel can come late)."""
        with self._lock:
            self._cancelled = {other for other in self._cancelled if other > request_id}

    def _read(self) -> None:
        try:
            self._serve()
        except BaseException:  # noqa: BLE001 - a deaf worker would cost every prompt a stall
            os._exit(70)      # the parent restarts the worker and says so

    def _serve(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                os._exit(0)   # the parent is gone: nobody is left to answer
            kind = message[0]
            if kind in ('generate', 'end_conversation'):    # in order, on the main thread
                self.work.put(message)
            elif kind == 'cancel':
                with self._lock:
                    self._cancelled.add(message[1])
            elif kind == 'shutdown':
                with self._lock:
                    self._shutting_down = True   # ends the request in flight at the next token
                self.work.put(None)
                return


def graph_state(requested: bool, provider: str, refused: Optional[str],
                bound: Optional[int] = None) -> str:
    """
    Say what became of cuda_graph, for /diagnostics: 'on', 'off', or 'off: why' (asked for).

    'on (prepared decoder, N tokens)' where it runs on a decoder prepared by graph_decoder.py.
    """
    if not requested:
        return 'off'
    if refused is not None:
        return f'off: {refused}'
    if provider != 'cuda':
        return f'off: the {provider} provider'
    return 'on' if bound is None else f'on (prepared decoder, {bound} tokens)'


def graph_config(config: EngineConfig, log) -> Tuple[EngineConfig, Optional[str]]:
    """
    Return (the config to load, why cuda_graph is off or None) for a CUDA graph on this model.

    A decoder with LongRoPE's If is loaded from its prepared copy (graph_decoder.py), which is
    made here the first time; one that cannot be prepared loads as it is, with the graph off.
    Without cuda_graph, on the CPU, or for a folder that does not read, nothing is done here (the
    load says what is wrong with the folder).
    """
    if not config.cuda_graph:
        return config, None
    try:
        og = import_genai()
        if resolve_provider(config.provider, bool(og.is_cuda_available())) != 'cuda':
            return config, None
        read_genai_config(config.model_path, getattr(og, '__version__', 'unknown'))
    except Exception:  # noqa: BLE001 - reported by the load itself, with the reason
        return config, None
    try:
        folder = graph_decoder.prepare_for_graph(
            config.model_path, graph_decoder.logits_check(og, 'cuda', config.device_id), log)
    except Exception as exc:  # noqa: BLE001 - fail-safe: the answer comes without the graph
        why = str(exc) if isinstance(exc, graph_decoder.NotPreparable) else \
            f'the decoder could not be prepared ({type(exc).__name__}: {exc})'
        log(f'cuda_graph: off: {why}')
        gc.collect()
        return dataclasses.replace(config, cuda_graph=False), first_line(why)
    return (config if folder is None else dataclasses.replace(config, model_path=folder)), None


def worker_main(conn, config: EngineConfig, warmup: bool) -> None:
    """
    Serve on conn until 'shutdown' (worker_launch.main calls it in the spawned process).

    The parent decides when the worker stops (it asks, then kills), so that the prompt in flight
    is answered as "shutting down" and no restart is scheduled; worker_launch makes it ignore
    SIGINT and SIGTERM and die with the parent before anything else.
    """
    log = lambda text: conn.send(('log', text))  # noqa: E731
    asked = config
    config, graph_refused = graph_config(config, log)
    engine, failure = _start_engine(config, warmup, log)
    if failure is not None and config.cuda_graph:
        # A decoder with control flow (LongRoPE's If) is refused at load, a graph that cannot be
        # captured fails the warm-up: the answer must come anyway, so the graph turns itself off.
        # Outside the except: the failed engine is gone before the second load takes its memory.
        graph_refused = first_line(failure)
        log(f'cuda_graph: the model did not load or warm up with it on ({failure}); trying once '
            'more with it off')
        gc.collect()
        engine, failure = _start_engine(dataclasses.replace(asked, cuda_graph=False), warmup,
                                        log)     # the user's folder, not a prepared one
    if failure is not None:
        conn.send(('load_failed', failure))
        return
    conn.send(('ready', {'provider': engine.provider, 'load_s': engine.load_s,
                         'genai_version': engine.genai_version, 'pid': os.getpid(),
                         'image_preprocessing': engine.image_preprocessing,
                         'context_length': engine.context_length,
                         'cuda_graph': graph_state(asked.cuda_graph, engine.provider,
                                                   graph_refused, engine.graph_bound)}))
    inbox = _Inbox(conn)
    frames = FrameReceiver()
    while True:
        message = inbox.work.get()
        if message is None:
            break
        if message[0] == 'end_conversation':    # frees the kept sequence's KV cache now
            engine.end_conversation()
            continue
        _, request_id, item = message
        result = _answer(engine, frames, inbox, request_id, item, conn)
        inbox.forget(request_id)
        conn.send(('result', request_id, result))
    frames.close()


def _answer(engine: Engine, frames: FrameReceiver, inbox: _Inbox, request_id: int,
            item: WorkItem, conn) -> Result:
    if inbox.is_cancelled(request_id):
        return Result(stop_reason=StopReason.CANCELLED, error='cancelled')
    # Pieces that come faster than stream_interval_s are sent together (see piece_coalescer.py): at
    # thousands of tokens/s, one message per token costs the node more CPU than the model's
    # decoding.
    pieces = PieceCoalescer(lambda text: conn.send(('piece', request_id, text)),
                            engine.config.stream_interval_s)
    images = request = None
    try:
        images = tuple(pixels if frame is None else frames.view(frame, slot)
                       for slot, (frame, pixels) in enumerate(zip(item.frames, item.pixels)))
        request = Request(prompt=item.prompt, images=images, cameras=item.cameras,
                          missing_cameras=item.missing_cameras, settings=item.settings,
                          system_prompt=item.system_prompt, history=item.history,
                          answer_format=item.answer_format, keep_tokens=item.keep_tokens,
                          follow_up=item.follow_up)
        return engine.generate(request, on_piece=pieces.add,
                               should_stop=lambda: inbox.is_cancelled(request_id))
    except Exception as exc:  # noqa: BLE001 - a bug must cost one request, not the worker
        return Result(stop_reason=StopReason.ERROR,
                      error=f'internal error: {type(exc).__name__}: {exc}')
    finally:
        del request, images   # release the shared-memory views before a block can be closed
        pieces.flush()       # before the result: the pieces of an answer all come before it
