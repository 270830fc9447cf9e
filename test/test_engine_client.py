"""
The worker process and its client.

A real engine in a spawned process, killed and restarted for real.
"""
import os
import signal
import threading
import time

from phi3v_ros.base.errors import EngineError
from phi3v_ros.engine.engine import EngineConfig
from phi3v_ros.engine.engine_client import describe_exit, EngineClient, EngineState
from phi3v_ros.engine.generation import GenerationSettings, Request, StopReason
from phi3v_test_utils import gradient_image
import pytest

pytest.importorskip('onnxruntime_genai')

READY_TIMEOUT_S = 60


class Reply:
    """Collects one request's streamed pieces and its result; done is set by the result."""

    def __init__(self):
        self.pieces = []
        self.result = None
        self.done = threading.Event()

    def on_piece(self, piece):
        self.pieces.append(piece)

    def on_result(self, result):
        assert self.result is None, 'a second result for one request'
        self.result = result
        self.done.set()

    def wait(self, timeout=30):
        assert self.done.wait(timeout), 'no result in time'
        return self.result


def ask(client, request):
    reply = Reply()
    client.submit(request, on_result=reply.on_result, on_piece=reply.on_piece)
    return reply


@pytest.fixture
def client(tiny_model):
    states = []
    engine_client = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu'), warmup=True,
                                 restart_backoff_s=(0.1, 1.0),
                                 on_state=lambda state, detail: states.append(state))
    engine_client.states = states
    engine_client.start()
    assert engine_client.wait_ready(READY_TIMEOUT_S)
    yield engine_client
    engine_client.close()


def test_answers_with_an_image_and_streams(client):
    reply = ask(client, Request(prompt='What is this?', images=(gradient_image(480, 640),),
                                settings=GenerationSettings(max_new_tokens=12)))
    result = reply.wait()
    assert result.ok, result.error
    assert result.image_tokens > 0 and result.generated_tokens > 0
    assert ''.join(reply.pieces) == result.text
    assert client.state == EngineState.READY
    assert client.info['provider'] == 'cpu'
    assert EngineState.LOADING in client.states and EngineState.GENERATING in client.states


def test_frames_of_changing_sizes_reach_the_worker_intact(client, tiny_model):
    from phi3v_ros.engine.engine import Engine
    direct = Engine(EngineConfig(model_path=tiny_model, provider='cpu'))
    for height, width, seed in [(120, 160, 1), (1080, 1920, 2), (48, 64, 3)]:
        image = gradient_image(height, width, seed)
        settings = GenerationSettings(max_new_tokens=8)
        through_worker = ask(client,
                             Request(prompt='What?', images=(image,), settings=settings)).wait()
        in_process = direct.generate(Request(prompt='What?', images=(image,), settings=settings))
        assert through_worker.text == in_process.text
        assert through_worker.image_tokens == in_process.image_tokens


def test_one_request_at_a_time(client):
    first = ask(client,
                Request(prompt='Describe it.', settings=GenerationSettings(max_new_tokens=200)))
    with pytest.raises(EngineError, match='busy'):
        ask(client, Request(prompt='Again'))
    first.wait()


def test_cancel_mid_stream(client):
    reply = Reply()
    cancelled = threading.Event()

    def on_piece(piece):
        reply.on_piece(piece)
        if len(reply.pieces) == 2 and not cancelled.is_set():
            cancelled.set()
            assert client.cancel()

    client.submit(Request(prompt='Describe it.', images=(gradient_image(240, 320),),
                          settings=GenerationSettings(max_new_tokens=4000)),
                  on_result=reply.on_result, on_piece=on_piece)
    result = reply.wait()
    assert result.stop_reason == StopReason.CANCELLED
    assert 2 <= result.generated_tokens < 4000
    assert client.cancel() is False   # nothing in flight any more
    assert ask(client,
               Request(prompt='Hi', settings=GenerationSettings(max_new_tokens=3))).wait().ok


def kill_when_streaming(client, reply):
    deadline = time.monotonic() + 30
    while not reply.pieces and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(client.pid, signal.SIGKILL)


def test_worker_killed_mid_generation_fails_the_request_at_once_then_restarts(client):
    old_pid = client.pid
    reply = ask(client, Request(prompt='Describe it.', images=(gradient_image(240, 320),),
                                settings=GenerationSettings(max_new_tokens=100000)))
    kill_when_streaming(client, reply)
    killed_at = time.monotonic()
    result = reply.wait(5)
    assert time.monotonic() - killed_at < 1.0
    assert result.stop_reason == StopReason.ERROR
    assert 'SIGKILL' in result.error
    assert client.wait_ready(READY_TIMEOUT_S)
    assert client.pid != old_pid and client.restarts == 1
    assert EngineState.RESTARTING in client.states
    assert ask(client,
               Request(prompt='Hi again', settings=GenerationSettings(max_new_tokens=4))).wait().ok


def test_worker_killed_while_idle_is_restarted(client):
    os.kill(client.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while client.restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.wait_ready(READY_TIMEOUT_S)
    assert ask(client,
               Request(prompt='Hi', settings=GenerationSettings(max_new_tokens=3))).wait().ok


def test_load_failure_is_reported_and_not_retried(tmp_path):
    states = []
    client = EngineClient(EngineConfig(model_path=str(tmp_path / 'missing'), provider='cpu'),
                          on_state=lambda state, detail: states.append((state, detail)))
    client.start()
    try:
        with pytest.raises(EngineError, match='does not exist'):
            client.wait_ready(READY_TIMEOUT_S)
        assert client.state == EngineState.FAILED
        assert client.pid is None and client.restarts == 0
        with pytest.raises(EngineError, match='failed'):
            ask(client, Request(prompt='Hi'))
    finally:
        client.close()


def test_provider_cuda_without_cuda_fails_at_start_with_the_reason(tiny_model):
    import onnxruntime_genai as og
    if og.is_cuda_available():
        pytest.skip('this onnxruntime-genai has CUDA')
    client = EngineClient(EngineConfig(model_path=tiny_model, provider='cuda'))
    client.start()
    try:
        with pytest.raises(EngineError, match='no CUDA support'):
            client.wait_ready(READY_TIMEOUT_S)
    finally:
        client.close()


def test_close_stops_the_worker_and_frees_shared_memory(tiny_model):
    client = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu'), warmup=False)
    client.start()
    assert client.wait_ready(READY_TIMEOUT_S)
    reply = ask(client, Request(prompt='What?', images=(gradient_image(64, 64),),
                                settings=GenerationSettings(max_new_tokens=100000)))
    kill_pid = client.pid
    block = client._frames.names[0]
    assert os.path.exists(f'/dev/shm/{block}')
    client.close()
    # the request in flight still gets its reply
    assert reply.wait(5).stop_reason == StopReason.ERROR
    assert not os.path.exists(f'/dev/shm/{block}')
    with pytest.raises(ProcessLookupError):
        os.kill(kill_pid, 0)
    assert client.state == EngineState.STOPPED


def test_describe_exit():
    assert describe_exit(-9) == 'was killed by SIGKILL'
    assert describe_exit(1) == 'exited with code 1'
