import threading

from phi3v_ros.core.history import ConversationHistory
from phi3v_ros.core.prompt_queue import PromptQueue
import pytest


def test_fifo_within_the_bound():
    queue = PromptQueue(3)
    assert [queue.put(i) for i in (1, 2, 3)] == [None, None, None]
    assert len(queue) == 3
    assert [queue.get(0) for _ in range(3)] == [1, 2, 3]
    assert queue.get(0.01) is None


def test_reject_policy_refuses_the_new_prompt():
    queue = PromptQueue(2, 'reject')
    queue.put('a')
    queue.put('b')
    assert queue.put('c') == 'c'
    assert [queue.get(0), queue.get(0)] == ['a', 'b']


def test_drop_oldest_policy_hands_back_the_oldest():
    queue = PromptQueue(2, 'drop_oldest')
    queue.put('a')
    queue.put('b')
    assert queue.put('c') == 'a'
    assert [queue.get(0), queue.get(0)] == ['b', 'c']


def test_configure_changes_bound_and_policy_and_validates():
    queue = PromptQueue(1, 'reject')
    queue.configure(2, 'drop_oldest')
    assert queue.put(1) is None and queue.put(2) is None and queue.put(3) == 1
    with pytest.raises(ValueError, match='max_queue'):
        queue.configure(0, 'reject')
    with pytest.raises(ValueError, match='busy_policy'):
        queue.configure(1, 'newest')


def test_close_wakes_the_consumer_and_returns_waiting_items():
    queue = PromptQueue(5)
    got = []
    consumer = threading.Thread(target=lambda: got.append(queue.get()))
    consumer.start()
    queue.put('x')
    consumer.join(5)
    assert got == ['x']
    queue.put('y')
    queue.put('z')
    waiting_consumer = threading.Thread(target=lambda: got.append(queue.get()))
    assert queue.close() == ['y', 'z']
    waiting_consumer.start()
    waiting_consumer.join(5)
    assert got == ['x', None]
    assert queue.put('late') == 'late'   # refused once closed


def test_history_keeps_the_last_turns_and_clears():
    history = ConversationHistory(2)
    for i in range(3):
        history.add(f'q{i}', f'a{i}', history.turns()[1])
    assert [t.question for t in history.turns()[0]] == ['q1', 'q2']
    history.max_turns = 1
    assert [t.question for t in history.turns()[0]] == ['q2']
    history.clear()
    assert history.turns()[0] == ()


def test_an_answer_to_a_question_asked_before_clear_is_not_added_after_it():
    history = ConversationHistory(4)
    history.add('before', 'kept until clear', history.turns()[1])
    _, epoch = history.turns()       # a question is asked with this history...
    history.clear()                  # ...~/reset comes while it is being answered...
    history.add('asked before reset', 'answered after', epoch)
    assert history.turns()[0] == ()  # ...and its answer does not bring the old conversation back
    history.add('asked after reset', 'kept', history.turns()[1])
    assert [t.question for t in history.turns()[0]] == ['asked after reset']


def test_history_of_zero_turns_keeps_nothing():
    history = ConversationHistory(0)
    history.add('q', 'a', history.turns()[1])
    assert history.turns()[0] == ()
    with pytest.raises(ValueError):
        history.max_turns = -1
