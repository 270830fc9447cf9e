"""
Requests through VisionQA (the node's request logic, no ROS) and the real engine in its worker.

A request's options apply to it alone; its answer is checked before it is called answered; it
shares the queue, the policies and cancel with plain prompts; its response is the documented
JSON; ids are unique among the open requests.
"""
import dataclasses
import json
import pathlib

from phi3v_ros.core.responses import response_message
from phi3v_ros.core.vision_qa import QAOptions
from phi3v_ros.engine.generation import GenerationSettings
from phi3v_ros.engine.guidance import has_guidance
from phi3v_ros.frames.cameras import Cameras
from phi3v_ros.frames.frame_cache import FrameAge
from phi3v_ros.interface import requests as R
from phi3v_test_utils import gradient_image, SettableClock
import pytest
from test_vision_qa import Harness, LONG, SHORT

og = pytest.importorskip('onnxruntime_genai')
needs_guidance = pytest.mark.skipif(not has_guidance(og), reason='guidance came in 0.8')
SCHEMA = {'type': 'object', 'properties': {'open': {'type': 'boolean'},
                                           'people': {'type': 'integer', 'minimum': 0,
                                                      'maximum': 9}},
          'required': ['open', 'people'], 'additionalProperties': False}


@pytest.fixture
def make(cpu_engine_client):
    made = []

    def factory(names=('/head',), **options):     # one image: 0.4 takes no more
        cameras = Cameras(list(names), FrameAge('stamp', SettableClock(1000.0)), labelled=True)
        harness = Harness(cpu_engine_client,
                          QAOptions(**{'settings': SHORT, 'allow_text_only': True,
                                       'image_wait_timeout_s': 0.0, **options}),
                          cameras=cameras)
        for index, name in enumerate(names):
            cameras.store(name, gradient_image(120, 160, seed=index), 999.9)
        made.append(harness)
        return harness
    yield factory
    for harness in made:
        harness.qa.close()


def request(request_id, question='Is the door open?', **fields):
    return R.QARequest(id=request_id, question=question, **fields)


@needs_guidance
def test_a_formatted_request_gets_its_checked_value_and_a_response_of_the_schema(make):
    h = make(settings=GenerationSettings(max_new_tokens=64))
    h.qa.ask('Is the door open?', request('r1', format=R.AnswerFormat('json_schema', SCHEMA)))
    reply = h.wait_replies(1)[0]
    assert reply.ok and reply.value == json.loads(reply.text) and set(reply.value) == {
        'open', 'people'}
    response = json.loads(response_message(reply))
    assert response['id'] == 'r1' and response['status'] == 'ok'
    assert response['value'] == reply.value and response['error'] is None
    assert [frame['camera'] for frame in response['frames']] == ['/head']
    assert response['generated_tokens'] > 0 and response['constrained_by'] == 'guidance'
    jsonschema = pytest.importorskip('jsonschema')
    schemas = pathlib.Path(R.__file__).parent / 'schemas'
    jsonschema.validate(response, json.loads((schemas / 'response.schema.json').read_text()))


@needs_guidance
def test_choices_give_their_probabilities(make):
    h = make()
    h.qa.ask('Is the door open?', request('c1', format=R.AnswerFormat('choices', ('yes', 'no'))))
    reply = h.wait_replies(1)[0]
    response = json.loads(response_message(reply))
    assert response['value'] in ('yes', 'no') and response['text'] == response['value']
    assert set(response['choice_probabilities']) == {'yes', 'no'}


def test_a_request_answers_from_the_cameras_it_names(make):
    h = make(names=('/head', '/wrist'))
    h.qa.ask('What is on the wrist camera?', request('w', cameras=('/wrist',)))
    reply = h.wait_replies(1)[0]
    assert reply.ok and [bound.camera for bound in reply.frames] == ['/wrist']
    h.qa.ask('And here?', request('x', cameras=('/elbow',)))
    refused = h.wait_replies(2)[1]
    assert refused.outcome == 'rejected' and 'cameras /elbow are not subscribed here' in \
        refused.text and '/head, /wrist' in refused.text


def test_a_request_cannot_ask_for_more_tokens_than_the_node_allows(make):
    h = make()
    h.qa.ask('Tell me all.', request('big', max_new_tokens=9))
    reply = h.wait_replies(1)[0]
    assert reply.outcome == 'rejected' and 'more than the node allows (8' in reply.text
    h.qa.ask('Tell me a bit.', request('small', max_new_tokens=3))
    assert h.wait_replies(2)[1].result.generated_tokens <= 3


@needs_guidance
def test_an_answer_cut_off_by_max_new_tokens_is_an_error_not_a_value(make):
    h = make()
    h.qa.ask('Count.', request('cut', format=R.AnswerFormat('json_schema', {
        'type': 'object', 'properties': {'n': {'type': 'integer'}}, 'required': ['n']}),
        max_new_tokens=3))
    reply = h.wait_replies(1)[0]
    assert reply.outcome == 'failed' and 'cut off at max_new_tokens (3)' in reply.text
    response = json.loads(response_message(reply))
    assert response['status'] == 'error' and response['value'] is None
    assert response['error'].startswith('the answer was cut off')


def test_ids_are_unique_among_open_requests_and_free_again_after(make):
    h = make(settings=LONG)
    h.qa.ask('Describe everything.', request('same'))
    assert h.first_piece.wait(30)
    h.qa.ask('Again?', request('same'))
    duplicate = h.wait_replies(1, timeout=5)[0]
    assert duplicate.outcome == 'rejected' and "id 'same' is already waiting" in duplicate.text
    assert h.qa.cancel_request('same')
    first = h.wait_replies(2)[1]
    assert first.ticket.request.id == 'same' and \
        'cancelled (its client cancelled the request)' in first.text
    h.qa.configure(dataclasses.replace(h.qa.options, settings=SHORT))
    h.qa.ask('Once more?', request('same'))
    assert h.wait_replies(3)[2].ok, 'the id is free once its request was answered'


def test_a_waiting_request_is_cancelled_in_the_queue_and_prompts_share_the_queue(make):
    h = make(settings=LONG, max_queue=2, busy_policy='reject')
    busy = h.qa.ask('Describe everything.')
    assert h.first_piece.wait(30)
    h.qa.ask('Waiting request?', request('queued'))
    h.qa.ask('A plain prompt waits too.')
    h.qa.ask('No room.', request('full'))
    full = h.wait_replies(1, timeout=5)[0]
    assert full.ticket.request.id == 'full' and 'busy: 2 prompts are already waiting' in \
        full.text
    assert h.qa.cancel_request('queued')
    assert not h.qa.cancel_request('queued'), 'its reply is out: nothing to cancel'
    assert not h.qa.cancel_request('never-sent')
    cancelled = h.wait_replies(2, timeout=5)[1]
    assert cancelled.ticket.request.id == 'queued' and \
        'cancelled by its client before it was answered' in cancelled.text
    h.qa.configure(dataclasses.replace(h.qa.options, settings=SHORT))
    h.qa.cancel()
    replies = h.wait_replies(4)
    assert len({r.ticket.id for r in replies}) == 4, 'exactly one reply each'
    assert 'cancelled (~/cancel was called)' in h.reply_to(busy).text


def test_requests_use_no_history(make):
    h = make(history_turns=2)
    h.qa.ask('Plain question.')
    h.qa.ask('A request.', request('r'))
    h.wait_replies(2)
    turns, _ = h.qa._history.turns()
    assert [turn.question for turn in turns] == ['Plain question.']
