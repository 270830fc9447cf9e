"""Shared fixtures: tiny real Phi-3-vision models generated once per test session."""
import os
import sys

import pytest

LONG_CONTEXT = 32768
# Short enough to decode to the end in a second or two; longer than a text-only prompt.
SHORT_CONTEXT = 640

# Tests import the package from the source tree (also under colcon, which installs it anyway).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Every test is bounded in time (see hang_watchdog): its hooks, found through the path above.
from hang_watchdog import pytest_configure, pytest_runtest_protocol  # noqa: E402,F401,I100


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """
    Kill the nodes a test's body started and left running (it failed before it stopped them).

    Only those of the call phase: fixtures stop their own nodes, and a module-scoped fixture's
    nodes serve the next tests (an autouse fixture could not tell them apart: pytest may set a
    module fixture up after it, when a function fixture asks for it).
    """
    from ros_harness import kill_started_since, started_count
    count = started_count()
    yield
    kill_started_since(count)


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
    """
    Write a random-weight model in the phi3v folder layout that answers readable text.

    Its context is long (32k tokens) so that a test can keep a generation running for seconds
    (cancel, queue floods); the KV cache is sized per request, so short requests stay cheap.
    Every tiny model here has the folder layout the installed onnxruntime-genai reads (May-2024
    for 0.4, see make_tiny_model.layout_for_genai).
    """
    pytest.importorskip('onnxruntime_genai')
    from phi3v_ros.tools.make_tiny_model import make_tiny_model
    return str(make_tiny_model(tmp_path_factory.mktemp('tiny') / 'model', seed=0,
                               context_length=LONG_CONTEXT, layout='auto'))


@pytest.fixture(scope='session')
def tiny_model_that_ends(tmp_path_factory):
    """Write the same model, biased to answer <|end|> at once."""
    pytest.importorskip('onnxruntime_genai')
    from phi3v_ros.tools.make_tiny_model import make_tiny_model
    return str(make_tiny_model(tmp_path_factory.mktemp('tiny_end') / 'model', seed=0,
                               end_immediately=True, layout='auto'))


@pytest.fixture(scope='module')
def cpu_engine_client(tiny_model):
    """Start the engine client (and its worker) on the tiny model, CPU, no warm-up; per module."""
    from phi3v_ros.engine.engine import EngineConfig
    from phi3v_ros.engine.engine_client import EngineClient
    client = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu'), warmup=False)
    client.start()
    assert client.wait_ready(60)
    yield client
    client.close()


@pytest.fixture(scope='session')
def tiny_model_short_context(tmp_path_factory):
    """
    Write the same model with a short context (SHORT_CONTEXT tokens).

    For tests that must generate up to the context length: on the 32k model that takes minutes.
    """
    pytest.importorskip('onnxruntime_genai')
    from phi3v_ros.tools.make_tiny_model import make_tiny_model
    return str(make_tiny_model(tmp_path_factory.mktemp('tiny_short') / 'model', seed=0,
                               context_length=SHORT_CONTEXT, layout='auto'))
