"""VisionQA (the node's request logic, no ROS) driving the real engine in its worker process."""
import dataclasses
import threading
import time

from phi3v_ros.base.errors import ImageConversionError
from phi3v_ros.core.vision_qa import ERROR_PREFIX, QAOptions, VisionQA
from phi3v_ros.engine.engine import EngineConfig
from phi3v_ros.engine.engine_client import EngineClient
from phi3v_ros.engine.generation import GenerationSettings
from phi3v_ros.engine.hd_transform import crop_grid
from phi3v_ros.frames.cameras import Cameras
from phi3v_ros.frames.frame_cache import FrameAge
from phi3v_test_utils import gradient_image, SettableClock
import pytest
from test_cameras import store_once_waited_on

pytest.importorskip('onnxruntime_genai')

SHORT = GenerationSettings(max_new_tokens=8)
LONG = GenerationSettings(max_new_tokens=20000)   # seconds on the tiny model: always cancelled


class Harness:
    def __init__(self, engine, options, convert=None, cameras=None, **qa_arguments):
        # by default the one unnamed camera of image_topic, aged by arrival: these tests stamp
        # frames 1.0, 2.0, ... to tell them apart (test_cameras.py has the stamp ages)
        self.cameras = cameras or Cameras(['image'], FrameAge('arrival'), labelled=False)
        self.frames = self.cameras.cache(self.cameras.names[0])
        self.replies = []
        self.pieces = {}
        self.reply_arrived = threading.Condition()
        self.first_piece = threading.Event()
        self.qa = VisionQA(engine, self.cameras, convert or (lambda frame, slot: frame.message),
                           on_reply=self._on_reply, on_piece=self._on_piece, options=options,
                           **qa_arguments)
        self.qa.start()

    def _on_reply(self, reply):
        with self.reply_arrived:
            self.replies.append(reply)
            self.reply_arrived.notify_all()

    def _on_piece(self, ticket, piece):
        with self.reply_arrived:
            self.pieces.setdefault(ticket.id, []).append(piece)
            self.reply_arrived.notify_all()
        self.first_piece.set()

    def wait_for_pieces(self, ticket, count, timeout=30):
        with self.reply_arrived:
            return self.reply_arrived.wait_for(
                lambda: len(self.pieces.get(ticket.id, ())) >= count, timeout)

    def wait_replies(self, count, timeout=60):
        with self.reply_arrived:
            arrived = self.reply_arrived.wait_for(lambda: len(self.replies) >= count, timeout)
            assert arrived, self.replies
        return list(self.replies)

    def reply_to(self, ticket):
        return next(r for r in self.replies if r.ticket.id == ticket.id)


@pytest.fixture
def make(cpu_engine_client):
    engine = cpu_engine_client
    made = []

    def factory(convert=None, cameras=None, log=None, **options):
        harness = Harness(engine, QAOptions(**{'settings': SHORT, **options}), convert, cameras,
                          **({'log': log} if log else {}))
        made.append(harness)
        return harness
    yield factory
    for harness in made:
        harness.qa.close()


def test_answers_a_prompt_about_the_latest_frame_and_streams_it(make):
    h = make()
    h.frames.store(gradient_image(480, 640), 12.5)
    ticket = h.qa.ask('  What is this?  ')
    reply = h.wait_replies(1)[0]
    assert reply.ok and not reply.text.startswith(ERROR_PREFIX)
    assert reply.ticket.question == 'What is this?'
    assert ''.join(h.pieces[ticket.id]) == reply.text
    assert reply.frames[0].frame.stamp_s == 12.5 and reply.result.image_tokens > 0
    assert h.qa.counters.answered == 1 and h.qa.counters.received == 1


@pytest.mark.parametrize('prompt,reason',
                         [('', 'empty'), (' \n\t', 'empty'), ('x' * 101, 'max_prompt_chars')])
def test_invalid_prompts_get_an_error_reply_at_once(make, prompt, reason):
    h = make(max_prompt_chars=100)
    h.qa.ask(prompt)
    reply = h.wait_replies(1, timeout=1)[0]
    assert reply.text.startswith(ERROR_PREFIX) and reason in reply.text
    assert reply.outcome == 'rejected' and h.qa.counters.rejected == 1


def test_no_frame_gives_an_error_after_the_wait(make):
    h = make(image_wait_timeout_s=0.3)
    start = time.monotonic()
    h.qa.ask('What is this?')
    reply = h.wait_replies(1)[0]
    assert time.monotonic() - start >= 0.3
    assert reply.text == ERROR_PREFIX + 'no camera image has arrived (waited 0.3 s).'
    assert h.qa.counters.failed == 1


def test_text_only_mode_answers_without_a_frame(make):
    h = make(image_wait_timeout_s=0.0, allow_text_only=True)
    h.qa.ask('Hello?')
    reply = h.wait_replies(1)[0]
    assert reply.ok and reply.frames == () and reply.result.image_tokens == 0


def test_stale_frame_gives_an_error_after_the_wait(make):
    h = make(max_image_age_s=0.05, image_wait_timeout_s=0.2)
    h.frames.store(gradient_image(48, 64), 0.0)
    time.sleep(0.1)
    h.qa.ask('What is this?')
    reply = h.wait_replies(1)[0]
    assert reply.text.startswith(ERROR_PREFIX + 'the latest camera image is')
    assert 'max_image_age (0.05 s)' in reply.text


@pytest.fixture
def stamped(make):
    """Harnesses whose cameras are aged by stamp against a settable clock (at 1000 s)."""
    def factory(names=('image',), labelled=False, **options):
        cameras = Cameras(list(names), FrameAge('stamp', SettableClock(1000.0)), labelled=labelled)
        return make(cameras=cameras, **options)
    return factory


def test_a_fresh_frame_arriving_during_the_wait_is_used(stamped):
    h = stamped(max_image_age_s=1.0, image_wait_timeout_s=60.0)
    h.frames.store(gradient_image(48, 64, seed=1), 900.0)      # 100 s old
    thread = store_once_waited_on(h.cameras, 'image', gradient_image(48, 64, seed=2), 1000.0)
    start = time.monotonic()
    h.qa.ask('What is this?')
    reply = h.wait_replies(1, timeout=90)[0]
    waited = time.monotonic() - start
    thread.join()
    assert reply.ok and reply.frames[0].frame.stamp_s == 1000.0
    assert waited < 30, 'the prompt went on when the frame came, not at the end of the wait'


def test_one_stale_camera_of_several_costs_its_image_not_the_others(stamped):
    said = []
    h = stamped(names=('/head', '/wrist'), labelled=True, log=said.append, max_image_age_s=1.0,
                image_wait_timeout_s=0.2, allow_text_only=True)
    h.cameras.store('/head', gradient_image(480, 640, seed=3), 999.9)     # 0.1 s old
    h.cameras.store('/wrist', gradient_image(480, 640, seed=4), 970.0)    # 30 s old
    h.qa.ask('Is the cup held?')
    reply = h.wait_replies(1)[0]
    assert reply.ok, reply.text
    assert [bound.camera for bound in reply.frames] == ['/head'] and reply.missing == ('/wrist',)
    assert reply.result.image_tokens == crop_grid(480, 640).image_tokens, 'one image, not none'
    assert any('prompt #1: answered without /wrist (allow_text_only): ' in line
               and '/wrist: the latest image is 30.0 s old' in line for line in said), said


def test_conversion_error_is_a_readable_error_reply(make):
    def refuse(frame, slot):
        raise ImageConversionError("unsupported encoding '32FC1'")
    h = make(convert=refuse)
    h.frames.store(object(), 0.0)
    h.qa.ask('What is this?')
    assert h.wait_replies(1)[0].text == (
        ERROR_PREFIX + "the camera image could not be used: unsupported encoding '32FC1'")


def flood(h, count):
    """Start a long answer, then send count prompts while it runs."""
    h.frames.store(gradient_image(48, 64), 0.0)
    busy = h.qa.ask('Describe everything.')
    assert h.first_piece.wait(30)
    return busy, [h.qa.ask(f'question {i}') for i in range(count)]


def test_reject_policy_refuses_prompts_beyond_the_queue(make):
    h = make(max_queue=2, busy_policy='reject', settings=LONG)
    busy, tickets = flood(h, 5)
    rejected = h.wait_replies(3, timeout=5)
    assert {r.ticket.id for r in rejected} == {t.id for t in tickets[2:]}
    assert all('busy' in r.text for r in rejected)
    h.qa.configure(dataclasses.replace(h.qa.options, settings=SHORT))   # for the waiting ones
    h.qa.cancel()
    replies = h.wait_replies(6)
    assert len(replies) == 6 and len({r.ticket.id for r in replies}) == 6   # exactly one each
    assert h.reply_to(tickets[0]).ok and h.reply_to(tickets[1]).ok
    assert 'cancelled' in h.reply_to(busy).text


def test_drop_oldest_policy_drops_the_oldest_waiting_prompt(make):
    h = make(max_queue=2, busy_policy='drop_oldest', settings=LONG)
    busy, tickets = flood(h, 5)
    dropped = h.wait_replies(3, timeout=5)
    assert {r.ticket.id for r in dropped} == {t.id for t in tickets[:3]}
    assert all('dropped' in r.text for r in dropped)
    h.qa.configure(dataclasses.replace(h.qa.options, settings=SHORT))
    h.qa.cancel()
    h.wait_replies(6)
    assert h.reply_to(tickets[3]).ok and h.reply_to(tickets[4]).ok
    counters = h.qa.counters
    totals = (counters.received, counters.answered, counters.rejected, counters.failed)
    assert totals == (6, 2, 3, 1)


def test_cancel_with_nothing_running_is_refused(make):
    assert make().qa.cancel() is False


def test_cancel_once_the_reply_is_out_is_refused(make):
    # The reply callback runs on the dispatcher before it lets go of the prompt: a client that saw
    # the answer and cancels then must be told "nothing to cancel", not "cancelling" (a flake of
    # test_node_integration under load).
    h = make(allow_text_only=True, image_wait_timeout_s=0.0)
    cancelled_in_reply = []
    h.qa._on_reply = lambda reply: (cancelled_in_reply.append(h.qa.cancel()), h._on_reply(reply))
    h.qa.ask('Hello?')
    reply = h.wait_replies(1)[0]
    assert reply.ok, reply.text
    assert cancelled_in_reply == [False]


def test_history_is_used_and_reset_clears_it(make):
    h = make(history_turns=2, allow_text_only=True, image_wait_timeout_s=0.0)
    h.qa.ask('First question?')
    first = h.wait_replies(1)[0]
    h.qa.ask('First question?')
    second = h.wait_replies(2)[1]
    assert second.result.prompt_tokens > first.result.prompt_tokens
    h.qa.reset_history()
    h.qa.ask('First question?')
    third = h.wait_replies(3)[2]
    assert third.result.prompt_tokens == first.result.prompt_tokens


def test_configure_applies_to_the_next_prompt(make):
    h = make(allow_text_only=True, image_wait_timeout_s=0.0)
    h.qa.ask('Hi')
    assert h.wait_replies(1)[0].result.generated_tokens == 8
    h.qa.configure(dataclasses.replace(h.qa.options,
                                       settings=GenerationSettings(max_new_tokens=3)))
    h.qa.ask('Hi')
    assert h.wait_replies(2)[1].result.generated_tokens == 3


def test_prompts_wait_while_the_engine_loads(tiny_model):
    client = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu'), warmup=True)
    h = Harness(client, QAOptions(settings=SHORT, allow_text_only=True, image_wait_timeout_s=0.0))
    try:
        h.qa.ask('Asked before the engine started')
        client.start()
        assert h.wait_replies(1)[0].ok
    finally:
        h.qa.close()
        client.close()


def test_failed_engine_answers_every_prompt_with_the_reason(tmp_path):
    client = EngineClient(EngineConfig(model_path=str(tmp_path / 'missing'), provider='cpu'))
    client.start()
    h = Harness(client, QAOptions(settings=SHORT))
    try:
        for _ in range(3):
            h.qa.ask('Anyone there?')
        replies = h.wait_replies(3)
        assert all(r.text.startswith(ERROR_PREFIX + 'the model is not available') for r in replies)
        assert all('does not exist' in r.text for r in replies)
    finally:
        h.qa.close()
        client.close()


def test_close_answers_waiting_prompts(make):
    h = make(max_queue=3, settings=LONG)
    busy, tickets = flood(h, 3)
    h.qa.close()
    replies = h.wait_replies(4, timeout=10)
    assert {r.ticket.id for r in replies} == {busy.id} | {t.id for t in tickets}
    assert all('shutting down' in r.text for r in replies)
    h.qa.ask('late')
    assert 'shutting down' in h.wait_replies(5, timeout=1)[4].text
