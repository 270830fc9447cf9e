"""
cuda_graph is fail-safe: a model that does not load or warm up with it is loaded again without it.

ONNX Runtime refuses a graph for a decoder with control flow (the If of LongRoPE); that refusal
needs a GPU, so the first test injects it, with ONNX Runtime's own words, into an otherwise real
engine in a real worker loop. The others run unchanged: on the CPU provider (where the option is
ignored) and on 0.4 (where it cannot be set, a real load error that the fallback turns off).
"""
from multiprocessing import Pipe
import os
import signal
import threading

from phi3v_ros.base.errors import ModelLoadError
from phi3v_ros.engine import worker
from phi3v_ros.engine.engine import EngineConfig
from phi3v_ros.engine.engine_client import EngineClient, EngineState
from phi3v_ros.engine.generation import GenerationSettings
import pytest

og = pytest.importorskip('onnxruntime_genai')

TIMEOUT_S = 60
ORT_REFUSAL = ('This session cannot use the graph capture feature as requested by the user as the '
               "model has control flow nodes which can't be supported by CUDAExecutionProvider")


class WorkerLoop:
    """worker_main on a thread of this process, talked to through a real pipe."""

    def __init__(self, config, warmup=False):
        self.conn, child = Pipe()
        self.thread = threading.Thread(target=worker.worker_main, args=(child, config, warmup),
                                       daemon=True)
        self.thread.start()

    def until(self, *kinds):
        """Return the messages up to and including the first of one of kinds."""
        seen = []
        while True:
            assert self.conn.poll(TIMEOUT_S), f'no message in {TIMEOUT_S} s after {seen}'
            message = self.conn.recv()
            seen.append(message)
            if message[0] in kinds:
                return seen

    def stop(self):
        """Ask the loop to end, unless it ended by itself (after load_failed), and join it."""
        try:
            self.conn.send(('shutdown',))
        except OSError:   # its end of the pipe is closed: the loop has returned
            pass
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive()


def test_a_graph_refused_at_load_is_turned_off_and_the_model_answers(tiny_model, monkeypatch):
    configs = []

    class RefusesGraphs(worker.Engine):
        def __init__(self, config, log):
            configs.append(config)
            if config.cuda_graph:
                raise ModelLoadError(f'onnxruntime-genai could not load {config.model_path!r}: '
                                     f'{ORT_REFUSAL}')
            super().__init__(config, log)

    monkeypatch.setattr(worker, 'Engine', RefusesGraphs)
    loop = WorkerLoop(EngineConfig(model_path=tiny_model, provider='cpu', cuda_graph=True))
    try:
        messages = loop.until('ready', 'load_failed')
        kind, info = messages[-1]
        assert kind == 'ready', info
        # its first line, cut to 200 characters for /diagnostics (the log has it whole)
        refusal = f'onnxruntime-genai could not load {tiny_model!r}: {ORT_REFUSAL}'
        assert info['cuda_graph'] == 'off: ' + refusal[:197] + '...'
        logs = [text for name, text in messages[:-1] if name == 'log']
        assert any(ORT_REFUSAL in text and 'trying once more with it off' in text
                   for text in logs), logs
        # the graph was asked for once (the warm-up ran with it: a failed capture is found
        # there), then the model loaded without it
        assert [c.cuda_graph for c in configs] == [True, False]
        item = worker.WorkItem(prompt='Hello', settings=GenerationSettings(max_new_tokens=3))
        loop.conn.send(('generate', 1, item))
        kind, request_id, result = loop.until('result')[-1]
        assert request_id == 1 and result.ok and result.generated_tokens == 3, result.error
    finally:
        loop.stop()


def test_a_load_error_that_is_not_the_graph_is_still_reported(tmp_path):
    loop = WorkerLoop(EngineConfig(model_path=str(tmp_path / 'missing'), provider='cpu',
                                   cuda_graph=True))
    try:
        kind, reason = loop.until('ready', 'load_failed')[-1]
        assert kind == 'load_failed' and 'does not exist' in reason
        loop.thread.join(TIMEOUT_S)
        assert not loop.thread.is_alive(), 'the worker loop did not end after load_failed'
    finally:
        loop.stop()


def test_graph_state_says_what_became_of_the_option():
    assert worker.graph_state(False, 'cuda', None) == 'off'
    assert worker.graph_state(True, 'cuda', None) == 'on'
    assert worker.graph_state(True, 'cpu', None) == 'off: the cpu provider'
    assert worker.graph_state(True, 'cuda', 'refused') == 'off: refused'


def test_a_restarted_worker_does_not_ask_for_the_graph_again(tiny_model):
    """A real worker process: the first one turns the graph off, its successor is not asked."""
    states, restarted = [], threading.Event()

    def on_state(state, detail):
        states.append(state)
        if state == EngineState.READY and EngineState.RESTARTING in states:
            restarted.set()

    client = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu', cuda_graph=True),
                          restart_backoff_s=(0.1, 1.0), on_state=on_state)
    client.start()
    try:
        assert client.wait_ready(TIMEOUT_S)
        first = client.info['cuda_graph']
        if hasattr(og, 'Config'):
            assert first == 'off: the cpu provider'
        else:   # 0.4: the option cannot be set, a load error the fallback turned off
            assert first.startswith('off: ') and 'cannot be set' in first
        os.kill(client.pid, signal.SIGKILL)
        assert restarted.wait(TIMEOUT_S), states
        assert client.info['cuda_graph'] == 'off'
    finally:
        client.close()
