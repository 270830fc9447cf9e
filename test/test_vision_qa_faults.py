"""
VisionQA's own faults, with the real engine in its worker process.

~/cancel racing the end of an answer, ~/reset during an answer, waits that used to have no end,
and a bug while serving a prompt: each prompt still gets exactly one reply, and the next one is
answered.
"""
import threading

from phi3v_ros.base.guarded_thread import ThreadHealth
from phi3v_ros.core.vision_qa import ERROR_PREFIX, QAOptions
from phi3v_ros.engine.engine import EngineConfig
from phi3v_ros.engine.engine_client import EngineClient
from phi3v_ros.engine.generation import GenerationSettings
import pytest
from test_vision_qa import Harness

pytest.importorskip('onnxruntime_genai')

SHORT = GenerationSettings(max_new_tokens=8)
TEXT = {'allow_text_only': True, 'image_wait_timeout_s': 0.0}


class HeldCancelClient(EngineClient):
    """The real client; cancel() waits for `release` first, as a slow ROS service thread can."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.cancelled_ids = []

    def cancel(self, request_id=None):
        self.entered.set()
        assert self.release.wait(30)
        self.cancelled_ids.append(request_id)
        return super().cancel(request_id)


@pytest.fixture
def started():
    made = []

    def factory(client):
        made.append(client)
        client.start()
        assert client.wait_ready(60)
        return client
    yield factory
    for client in made:
        client.close()


def test_a_late_cancel_does_not_cancel_the_next_prompt(tiny_model, started):
    client = started(HeldCancelClient(EngineConfig(model_path=tiny_model, provider='cpu'),
                                      warmup=False))
    h = Harness(client, QAOptions(settings=GenerationSettings(max_new_tokens=200), **TEXT))
    try:
        first = h.qa.ask('First')
        assert h.first_piece.wait(30)
        canceller = threading.Thread(target=h.qa.cancel)
        canceller.start()                   # ~/cancel for the first prompt...
        assert client.entered.wait(10)      # ...is held on its way to the engine
        h.wait_replies(1)                   # meanwhile the first answer ends
        second = h.qa.ask('Second')
        assert h.wait_for_pieces(second, 1)  # and the second one is being answered
        client.release.set()                # now the first prompt's cancel arrives
        canceller.join(10)
        replies = h.wait_replies(2)
        assert h.reply_to(second).ok, h.reply_to(second).text
        assert client.cancelled_ids[0] is not None and len(replies) == 2
        assert h.reply_to(first).ticket.id == first.id
    finally:
        client.release.set()
        h.qa.close()


def test_reset_during_an_answer_is_not_undone_by_that_answer(cpu_engine_client):
    engine = cpu_engine_client
    h = Harness(engine, QAOptions(settings=GenerationSettings(max_new_tokens=300),
                                  history_turns=4, **TEXT))
    try:
        h.qa.ask('Remember this')
        h.wait_replies(1)
        second = h.qa.ask('And this')        # answered with one turn of history...
        assert h.wait_for_pieces(second, 2)
        h.qa.reset_history()                 # ...~/reset comes while it is being answered
        h.wait_replies(2)
        h.qa.configure(QAOptions(settings=SHORT, history_turns=4, **TEXT))
        h.qa.ask('Remember this')
        fresh = h.wait_replies(3)[2]
        h.qa.ask('Remember this')
        again = h.wait_replies(4)[3]
        # the third prompt had no history at all (the second answer was not added after reset)
        assert fresh.result.prompt_tokens < h.replies[1].result.prompt_tokens
        assert again.result.prompt_tokens > fresh.result.prompt_tokens
    finally:
        h.qa.close()


def test_a_prompt_waits_for_the_engine_only_engine_wait_timeout(tiny_model):
    never_started = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu'))
    h = Harness(never_started, QAOptions(settings=SHORT, engine_wait_timeout_s=0.3, **TEXT))
    try:
        h.qa.ask('Anyone?')
        reply = h.wait_replies(1, timeout=10)[0]
        assert reply.text.startswith(ERROR_PREFIX + 'the model is still stopped after 0.3 s '
                                                    '(engine_wait_timeout)'), reply.text
        assert h.qa.counters.failed == 1
    finally:
        h.qa.close()
        never_started.close()


class StuckPublisher(Harness):
    """Its stream callback never returns (a publish blocked in the middleware), until released."""

    release = threading.Event()

    def _on_piece(self, ticket, piece):
        self.first_piece.set()
        self.release.wait(60)


def test_the_wait_for_a_result_ends_even_when_the_engine_goes_silent(tiny_model, started):
    """The engine client's monitor is stuck in a callback: nothing but the bound ends the wait."""
    client = started(EngineClient(EngineConfig(model_path=tiny_model, provider='cpu'),
                                  warmup=False, stall_timeout_s=0.5))
    h = StuckPublisher(client, QAOptions(settings=GenerationSettings(max_new_tokens=20000),
                                         **TEXT), result_grace_s=0.5)
    try:
        h.qa.ask('Hello?')
        reply = h.wait_replies(1, timeout=20)[0]
        assert reply.text == ERROR_PREFIX + 'the engine gave no sign of progress for 1 s.'
        assert not client.busy              # abandoned: the engine takes the next request
    finally:
        StuckPublisher.release.set()
        h.qa.close()


def test_a_bug_while_serving_a_prompt_is_its_error_reply_and_the_next_is_answered(
        cpu_engine_client):
    engine = cpu_engine_client
    health = ThreadHealth()
    calls = []

    def convert(frame, slot):
        calls.append(frame)
        if len(calls) == 1:
            raise OSError(28, 'No space left on device')
        return frame.message
    from phi3v_test_utils import gradient_image
    h = Harness(engine, QAOptions(settings=SHORT), convert, health=health)
    try:
        h.frames.store(gradient_image(48, 64), 0.0)
        h.qa.ask('First')
        first = h.wait_replies(1)[0]
        assert first.text == (ERROR_PREFIX
                              + 'internal error: OSError: [Errno 28] No space left on device')
        h.qa.ask('Second')
        assert h.wait_replies(2)[1].ok
        assert health.error_count == 1 and health.recent_error().thread == 'phi3v-dispatcher'
        assert health.dead_threads == []
    finally:
        h.qa.close()
