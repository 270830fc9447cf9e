"""vision_qa_node as its own process (its console script, --ros-args), driven over real DDS."""
import subprocess
import time

from phi3v_test_utils import gradient_image
import pytest
from ros_harness import entry_point, isolate_ros_domain, NodeProcess, RosPeer, wait_until

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')

ERROR = 'ERROR: '
LONG = 20000   # new tokens: seconds on the tiny model, so tests cancel it
BASE = {'provider': 'cpu', 'max_new_tokens': 12, 'diagnostics_period': 0.2, 'warmup': False}


@pytest.fixture(scope='module', autouse=True)
def ros_domain():
    isolate_ros_domain()


@pytest.fixture(scope='module')
def peer():
    ros_peer = RosPeer()
    yield ros_peer
    ros_peer.close()


def start_node(model, peer, **parameters):
    node = NodeProcess({'model_path': model, **BASE, **parameters})
    peer.wait_connected()
    peer.diagnostics.clear()
    peer.wait_ready()
    return node


@pytest.fixture(scope='module')
def node(tiny_model, peer):
    process = start_node(tiny_model, peer, image_wait_timeout=0.5)
    yield process
    assert process.stop() == 0, process.output()


@pytest.fixture
def clean(peer, node):
    """Fresh answer lists and default request parameters for each test on the shared node."""
    peer.set_parameters(max_new_tokens=12, max_queue=4, busy_policy='reject', max_image_age=0.0,
                        allow_text_only=False, history_turns=0, max_crops=16)
    with peer.changed:
        peer.answers.clear()
        peer.pieces.clear()
    return peer


def test_answers_a_question_about_a_published_frame_and_streams_it(clean, node):
    # 240x320 RGB (230 KB) fits Fast DDS's default 512 KiB shared-memory segment; a 640x480 frame
    # goes over UDP fragments, and the best-effort node lost all 20 tries of deliver_frame on a
    # loaded machine.
    clean.deliver_frame(gradient_image(240, 320))
    clean.ask('What do you see?')
    answer = clean.wait_answers(1)[0]
    assert not answer.startswith(ERROR)
    # Pieces and answers travel on two topics: the last pieces may land just after the answer.
    assert clean.wait_for(lambda: ''.join(p.data for p in clean.pieces) == answer, 5), clean.pieces
    line = node.wait_for_line('prompt #')
    assert 'answered' in line and 'frames: /image stamp ' in line


def test_every_prompt_gets_one_reply_including_invalid_ones(clean, node):
    clean.deliver_frame(gradient_image(120, 160))
    for text in ['', '   ', 'What colour?', 'x' * 5000]:
        clean.ask(text)
    answers = clean.wait_answers(4)
    time.sleep(0.3)   # nothing more may arrive
    assert len(clean.answers) == 4
    assert sum(a.startswith(ERROR + 'the prompt is empty') for a in answers) == 2
    assert sum('max_prompt_chars' in a for a in answers) == 1
    assert sum(not a.startswith(ERROR) for a in answers) == 1


def test_stale_frame_gives_the_error_reply_after_the_wait(clean, node):
    clean.set_parameters(max_image_age=0.2)
    clean.deliver_frame(gradient_image(48, 64))
    time.sleep(0.4)
    asked = time.monotonic()
    clean.ask('What now?')
    answer = clean.wait_answers(1)[0]
    assert time.monotonic() - asked >= 0.5   # image_wait_timeout
    assert answer.startswith(ERROR + 'the latest camera image is') and 'max_image_age' in answer


def test_text_only_mode(clean, node):
    clean.set_parameters(max_image_age=0.01, allow_text_only=True)
    time.sleep(0.05)
    clean.ask('Just say something.')
    assert not clean.wait_answers(1)[0].startswith(ERROR)


@pytest.mark.parametrize('policy,expected_error', [('reject', 'busy'), ('drop_oldest', 'dropped')])
def test_queue_overflow_under_each_policy(clean, node, policy, expected_error):
    clean.set_parameters(max_new_tokens=LONG, max_queue=1, busy_policy=policy)
    clean.deliver_frame(gradient_image(48, 64))
    clean.ask('Long one')
    assert clean.wait_for(lambda: clean.pieces, 30)
    for i in range(3):
        clean.ask(f'extra {i}')
    errors = clean.wait_answers(2, timeout=10)
    assert all(expected_error in a for a in errors)
    clean.set_parameters(max_new_tokens=12)   # for the prompt still waiting
    assert clean.trigger(clean.cancel_client).success
    answers = clean.wait_answers(4)
    assert 'cancelled' in answers[2]      # the long one
    assert not answers[3].startswith(ERROR)   # the one that kept its place


def test_cancel_with_nothing_running_and_reset(clean, node):
    response = clean.trigger(clean.cancel_client)
    assert not response.success and response.message == 'nothing to cancel'
    assert clean.trigger(clean.reset_client).success


def prompt_tokens(line):
    return int(line.split(' prompt + ')[0].rsplit(' ', 1)[1])


def test_history_then_reset(clean, node):
    clean.set_parameters(history_turns=2, allow_text_only=True, max_image_age=0.01)
    time.sleep(0.05)
    node.lines.clear()
    for count in (1, 2):
        clean.ask('Same question?')
        clean.wait_answers(count)
    clean.trigger(clean.reset_client)
    clean.ask('Same question?')
    clean.wait_answers(3)
    assert wait_until(lambda: sum('prompt + ' in line for line in node.lines) >= 3, 5)
    first, second, after_reset = [prompt_tokens(line) for line in node.lines
                                  if 'prompt + ' in line]
    assert second > first            # the first question and answer came along as history
    assert after_reset == first      # ~/reset forgot them


def test_parameter_change_takes_effect_on_the_next_answer(clean, node):
    clean.deliver_frame(gradient_image(48, 64))
    assert all(r.successful for r in clean.set_parameters(max_new_tokens=3))
    clean.ask('Short please')
    clean.wait_answers(1)
    line = node.wait_for_line('+ 3 new tokens')
    assert 'answered' in line


def test_max_crops_changes_the_image_tokens_from_the_next_prompt(clean, node):
    clean.deliver_frame(gradient_image(240, 320))   # 4:3
    node.lines.clear()
    for count, crops in enumerate((16, 4, 1), 1):   # taken one by one: it applies when taken
        assert all(r.successful for r in clean.set_parameters(max_crops=crops))
        clean.ask('What do you see?')
        assert not clean.wait_answers(count)[-1].startswith(ERROR)
    assert wait_until(lambda: sum('image tokens)' in line for line in node.lines) >= 3, 5)
    used = [line for line in node.lines if 'image tokens)' in line]
    assert [prompt_tokens(line) - prompt_tokens(used[0]) for line in used] == [0, -1164, -1608]
    assert ['13 crops (1921 image tokens)' in used[0], '5 crops (757 image tokens)' in used[1],
            '2 crops (313 image tokens)' in used[2]] == [True] * 3
    assert not clean.set_parameters(max_crops=17)[0].successful


def test_out_of_range_and_read_only_parameters_are_refused(clean, node):
    assert not clean.set_parameters(max_new_tokens=0)[0].successful
    assert not clean.set_parameters(temperature=100.0)[0].successful
    refused = clean.set_parameters(busy_policy='newest')[0]
    assert not refused.successful and 'busy_policy must be one of' in refused.reason
    assert not clean.set_parameters(model_path='/etc')[0].successful


def test_diagnostics_report_state_counts_and_frames(clean, node):
    clean.deliver_frame(gradient_image(48, 64))
    clean.ask('')
    clean.wait_answers(1)
    assert wait_until(lambda: clean.latest_diagnostic('prompts_rejected') not in (None, '0'), 5)
    for key in ('engine_state', 'provider', 'model_path', 'latest_frame_age_s', 'frames_received',
                'queue_depth', 'conversation', 'prompts_answered', 'prompts_failed',
                'last_time_to_first_token_s', 'last_tokens_per_s'):
        assert clean.latest_diagnostic(key) is not None, key
    assert clean.latest_diagnostic('provider') == 'cpu'
    assert clean.latest_diagnostic('engine_state') in ('ready', 'generating')
    assert clean.latest_diagnostic('cuda_graph') == 'off'
    assert clean.latest_diagnostic('conversation') == 'none'     # follow_up_window is off


def test_ask_client_exit_codes(clean, node):
    clean.deliver_frame(gradient_image(48, 64))
    ask = entry_point('ask')
    ok = subprocess.run(ask + ['What is this?', '--timeout', '30'], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip()
    error = subprocess.run(ask + ['   ', '--timeout', '30'], capture_output=True, text=True,
                           timeout=60)
    assert error.returncode == 1 and 'ERROR: the prompt is empty' in error.stderr
    nobody = subprocess.run(ask + ['Hello?', '--namespace', '/nobody', '--connect-timeout', '1'],
                            capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 3 and 'no vision_qa node' in nobody.stderr
    clean.set_parameters(max_new_tokens=LONG, max_queue=2)
    clean.ask('Keep busy')
    assert clean.wait_for(lambda: clean.pieces, 30)
    late = subprocess.run(ask + ['Too slow?', '--timeout', '0.1'], capture_output=True, text=True,
                          timeout=60)
    assert late.returncode == 2 and 'no answer within' in late.stderr
    clean.trigger(clean.cancel_client)
