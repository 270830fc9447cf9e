"""
Follow-up questions through VisionQA (no ROS) and the real engine in its worker process.

A follow-up is answered about its conversation's frames (not newer ones), prefilling only its own
turn; each way a conversation ends makes the next follow-up a new question that says why.
"""
import json
import os
import signal
import time

from phi3v_ros.core.conversation import FollowUpOptions
from phi3v_ros.core.responses import response_message
from phi3v_ros.core.vision_qa import ERROR_PREFIX, QAOptions
from phi3v_ros.engine.genai_releases import version_tuple
from phi3v_ros.engine.generation import GenerationSettings
from phi3v_ros.interface.requests import QARequest
from phi3v_test_utils import gradient_image
import pytest
from ros_harness import wait_until
from test_vision_qa import Harness, LONG

og = pytest.importorskip('onnxruntime_genai')
if version_tuple(og.__version__) < (0, 6):
    pytest.skip('follow-ups need append_tokens and get_logits (0.6)', allow_module_level=True)

SETTINGS = GenerationSettings(max_new_tokens=8, max_crops=1)
FOLLOW_UPS = FollowUpOptions(window_s=0.0, max_follow_ups=3, tokens=300)


@pytest.fixture
def make(cpu_engine_client):
    made = []

    def factory(**options):
        options = {'settings': SETTINGS, 'follow_ups': FOLLOW_UPS, **options}
        harness = Harness(cpu_engine_client, QAOptions(**options))
        made.append(harness)
        return harness
    yield factory
    for harness in made:
        harness.qa.close()


def ask(h, question, count, **fields):
    ticket = h.qa.ask(question, QARequest(id=fields.pop('id'), question=question, **fields)
                      if 'id' in fields else None)
    return ticket, h.wait_replies(count)[-1]


def test_a_request_follows_up_about_its_conversations_frames(make):
    h = make()
    h.frames.store(gradient_image(300, 400, seed=1), 1.0)
    _, first = ask(h, 'What is on the table?', 1, id='t-1', follow_ups=True)
    assert first.ok and first.conversation.open and not first.conversation.continued
    assert first.result.max_length == first.result.prompt_tokens + 8 + FOLLOW_UPS.tokens
    h.frames.store(gradient_image(300, 400, seed=2), 2.0)           # a newer frame arrives
    time.sleep(0.05)
    _, second = ask(h, 'Which one is red?', 2, id='t-2', follows='t-1')
    assert second.ok, second.text
    note = second.conversation
    assert note.continued and note.follow_up == 1 and note.follows == 't-1' and note.open
    assert second.frames[0].frame.stamp_s == 1.0                    # the conversation's frame
    assert second.frames[0].age_s > first.frames[0].age_s           # its age now
    assert second.result.image_tokens == 0 and second.result.prompt_tokens < 40
    response = json.loads(response_message(second))
    assert response['conversation'] == {'follows': 't-1', 'continued': True, 'follow_up': 1,
                                        'new_because': None, 'open': True}
    assert response['frames'][0]['stamp'] == 1.0
    # the conversation goes on from its latest answer
    _, third = ask(h, 'And the blue one?', 3, id='t-3', follows='t-2')
    assert third.conversation.continued and third.conversation.follow_up == 2
    assert h.qa.conversation.key == 't-3' and h.qa.conversation.follow_ups == 2


def test_a_follow_up_of_an_ended_conversation_is_a_new_question_that_says_why(make):
    h = make(follow_ups=FollowUpOptions(max_follow_ups=1, tokens=300))
    h.frames.store(gradient_image(300, 400, seed=1), 1.0)
    ask(h, 'What is on the table?', 1, id='a', follow_ups=True)
    ask(h, 'Which one is red?', 2, id='b', follows='a')
    h.frames.store(gradient_image(300, 400, seed=3), 3.0)
    _, third = ask(h, 'And the blue one?', 3, id='c', follows='b')   # past follow_up_max
    assert third.ok and not third.conversation.continued
    assert 'follow_up_max' in third.conversation.new_because
    assert third.frames[0].frame.stamp_s == 3.0 and third.result.image_tokens > 0
    # a follows that names something that is not the latest answer
    _, fourth = ask(h, 'Again?', 4, id='d', follows='nothing-like-it')
    assert not fourth.conversation.continued
    assert "'nothing-like-it' is not the latest answer" in fourth.conversation.new_because


@pytest.mark.parametrize('end,why', [
    ('reset', 'the conversation was reset (~/reset)'),
    ('another question', 'another question (#2) reached the model in between'),
    ('parameters', "the node's parameters changed"),
    ('worker restart', 'the inference worker was restarted'),
])
def test_each_way_a_conversation_ends(make, cpu_engine_client, end, why):
    h = make()
    h.frames.store(gradient_image(300, 400, seed=1), 1.0)
    ask(h, 'What is on the table?', 1, id='open', follow_ups=True)
    count = 1
    if end == 'reset':
        h.qa.reset_history()
    elif end == 'another question':
        ask(h, 'Something else?', 2)
        count = 2
    elif end == 'parameters':
        h.qa.configure(QAOptions(settings=SETTINGS, follow_ups=FOLLOW_UPS, max_queue=5))
    else:
        os.kill(cpu_engine_client.info['pid'], signal.SIGKILL)
        assert wait_until(lambda: cpu_engine_client.restarts > 0 and
                          cpu_engine_client.wait_ready(0.1), 60)
    h.frames.store(gradient_image(300, 400, seed=2), 2.0)
    _, follow = ask(h, 'Which one is red?', count + 1, id='next', follows='open')
    assert follow.ok and not follow.conversation.continued, follow.text
    assert follow.conversation.new_because == why
    assert follow.frames[0].frame.stamp_s == 2.0 and follow.result.image_tokens > 0


def test_a_cancelled_follow_up_ends_its_conversation(make):
    h = make(settings=LONG, follow_ups=FollowUpOptions(max_follow_ups=3, tokens=30000))
    h.frames.store(gradient_image(300, 400, seed=1), 1.0)
    ask(h, 'What is on the table?', 1, id='open', follow_ups=True, max_new_tokens=8)
    question = 'Tell me everything.'
    ticket = h.qa.ask(question, QARequest(id='long', question=question, follows='open'))
    assert h.wait_for_pieces(ticket, 1)
    assert h.qa.cancel()
    cancelled = h.wait_replies(2)[-1]
    assert not cancelled.ok and cancelled.conversation.follows == 'open'
    _, again = ask(h, 'Which one is red?', 3, id='next', follows='open', max_new_tokens=8)
    assert not again.conversation.continued
    assert again.conversation.new_because == 'its latest question was cancelled'


def test_frames_older_than_max_image_age_end_the_conversation(make):
    h = make()
    h.frames.store(gradient_image(300, 400, seed=1), 1.0)
    ask(h, 'What is on the table?', 1, id='open', follow_ups=True)
    time.sleep(0.3)
    h.frames.store(gradient_image(300, 400, seed=4), 4.0)
    _, late = ask(h, 'Which one is red?', 2, id='late', follows='open', max_image_age=0.2)
    assert late.ok and not late.conversation.continued
    assert 'more than max_image_age (0.2 s)' in late.conversation.new_because
    assert late.frames[0].frame.stamp_s == 4.0


def test_the_prompt_topic_follows_up_within_its_window_and_says_when_it_starts_anew(make):
    h = make(follow_ups=FollowUpOptions(window_s=30.0, max_follow_ups=3, tokens=300))
    h.frames.store(gradient_image(300, 400, seed=1), 1.0)
    _, first = ask(h, 'What is on the table?', 1)
    assert first.conversation.open and not first.text.startswith('(')
    _, second = ask(h, 'Which one is red?', 2)
    assert second.conversation.continued and second.frames[0].frame.stamp_s == 1.0
    h.qa.reset_history()
    _, third = ask(h, 'And now?', 3)
    assert not third.conversation.continued
    assert third.text.startswith('(new conversation: the conversation was reset (~/reset)) ')
    assert not third.text.startswith(ERROR_PREFIX)


def test_without_follow_up_options_nothing_is_kept(make):
    h = make(follow_ups=FollowUpOptions(window_s=0.0, max_follow_ups=0, tokens=0))
    h.frames.store(gradient_image(300, 400, seed=1), 1.0)
    _, first = ask(h, 'What?', 1, id='x', follow_ups=True)
    assert first.ok and not first.conversation.open
    assert first.result.max_length == first.result.prompt_tokens + 8
    _, plain = ask(h, 'And?', 2)
    assert plain.conversation is None


def test_a_reset_while_the_opening_is_answered_ends_that_conversation(make):
    h = make(settings=LONG, follow_ups=FollowUpOptions(max_follow_ups=3, tokens=300))
    h.frames.store(gradient_image(300, 400, seed=1), 1.0)
    question = 'Tell me everything.'
    ticket = h.qa.ask(question, QARequest(id='open', question=question, follow_ups=True,
                                          max_new_tokens=4000))
    assert h.wait_for_pieces(ticket, 1)
    h.qa.reset_history()                      # while the answer is still being written
    opened = h.wait_replies(1)[0]
    assert opened.ok and not opened.conversation.open   # it would have been open without it
    _, follow = ask(h, 'Which one is red?', 2, id='next', follows='open', max_new_tokens=8)
    assert not follow.conversation.continued
    assert follow.conversation.new_because == 'the conversation was reset (~/reset)'
