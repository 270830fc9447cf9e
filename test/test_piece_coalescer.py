"""PieceCoalescer: fewer stream messages, the same text, the first piece at once."""
import random

from hypothesis import given, settings, strategies as st

from phi3v_ros.engine.piece_coalescer import PieceCoalescer


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(interval_s=0.02):
    clock, sent = FakeClock(), []
    return PieceCoalescer(sent.append, interval_s, clock), clock, sent


def test_first_piece_goes_out_at_once():
    pieces, clock, sent = make()
    pieces.add('Hello')
    assert sent == ['Hello']


def test_fast_pieces_are_joined_and_flushed_at_the_end():
    pieces, clock, sent = make(0.02)
    for word in ['A', ' quick', ' brown', ' fox']:
        pieces.add(word)
        clock.now += 0.001            # 1000 tokens/s: far faster than the interval
    assert sent == ['A']
    pieces.flush()
    assert sent == ['A', ' quick brown fox']
    assert (pieces.messages, pieces.pieces) == (2, 4)


def test_a_piece_after_the_interval_takes_the_waiting_ones_with_it():
    pieces, clock, sent = make(0.02)
    pieces.add('a')
    clock.now += 0.005
    pieces.add('b')                   # waits
    clock.now += 0.016                # 21 ms after the last send
    pieces.add('c')
    assert sent == ['a', 'bc']


def test_slow_pieces_stream_one_by_one():
    pieces, clock, sent = make(0.02)
    for word in ['one', ' two', ' three']:
        pieces.add(word)
        clock.now += 0.05             # 20 tokens/s: slower than the interval
    assert sent == ['one', ' two', ' three']
    pieces.flush()                    # nothing waits: no empty message
    assert sent == ['one', ' two', ' three']


def test_zero_interval_sends_every_piece():
    pieces, clock, sent = make(0.0)
    for word in ['x', 'y', 'z']:
        pieces.add(word)              # same instant
    assert sent == ['x', 'y', 'z']


def test_empty_pieces_are_ignored():
    pieces, clock, sent = make()
    pieces.add('')
    pieces.flush()
    assert sent == [] and pieces.pieces == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=5), st.floats(0.0, 0.05)), max_size=60),
       st.floats(0.0, 0.1))
def test_joined_messages_equal_joined_pieces_and_no_piece_waits_past_the_next_due_one(
        steps, interval):
    pieces, clock, sent = make(interval)
    last_send = None
    for text, gap in steps:
        clock.now += gap
        before = len(sent)
        pieces.add(text)
        if len(sent) > before:
            last_send = clock.now
        elif text and last_send is not None:
            assert clock.now - last_send < interval   # held back only within the interval
    pieces.flush()
    assert ''.join(sent) == ''.join(text for text, _ in steps)
    assert all(sent)                                  # never an empty message
    assert len(sent) <= sum(1 for text, _ in steps if text)


def test_the_worker_streams_joined_pieces_that_equal_the_answer(tiny_model):
    """
    End to end through the worker process.

    Fewer messages than tokens, same text, result last.
    """
    import threading

    from phi3v_ros.engine.engine import EngineConfig
    from phi3v_ros.engine.engine_client import EngineClient
    from phi3v_ros.engine.generation import GenerationSettings, Request
    from phi3v_test_utils import gradient_image

    for interval, expect_fewer in ((0.02, True), (0.0, False)):
        client = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu',
                                           stream_interval_s=interval),
                              warmup=False)
        client.start()
        try:
            assert client.wait_ready(60)
            pieces, results, done = [], [], threading.Event()

            def on_result(result):
                results.append((result, len(pieces)))
                done.set()
            client.submit(Request('Describe the image.',
                                  images=(gradient_image(64, 64, seed=random.randint(0, 9)),),
                                  settings=GenerationSettings(max_new_tokens=200)),
                          on_result=on_result, on_piece=pieces.append)
            assert done.wait(60)
            result, pieces_before_result = results[0]
            assert result.ok and result.generated_tokens == 200
            # every piece came before the result
            assert pieces_before_result == len(pieces)
            assert ''.join(pieces) == result.text
            if expect_fewer:
                assert len(pieces) < result.generated_tokens / 4
            else:
                # one message per decoded piece (the tiny model's tokens are mostly whole words)
                assert len(pieces) >= result.generated_tokens * 0.9
        finally:
            client.close()
