"""
The decoder prepared for CUDA graphs (engine/graph_decoder.py), on the real pipeline, CPU.

The tiny model is made with LongRoPE as onnxruntime-genai's builder writes it for
Phi-3-vision-128k (short-factor caches up to N positions, long-factor ones past them, picked by
an If); N is 512 here instead of 4096 so that a request past it is cheap. The graph itself
(capture, speed) needs a GPU: bench/gpu/cuda_graph_fallback.py.
"""
import hashlib
import json
import os
import shutil

from phi3v_ros.engine import graph_decoder
from phi3v_ros.engine.engine import Engine, EngineConfig
from phi3v_ros.engine.genai_releases import version_tuple
from phi3v_ros.engine.generation import GenerationSettings, Request
from phi3v_ros.engine.graph_decoder import NotPreparable
from phi3v_test_utils import gradient_image
import pytest

og = pytest.importorskip('onnxruntime_genai')
onnx = pytest.importorskip('onnx')
if version_tuple(og.__version__) < (0, 6):
    pytest.skip('Generator.get_logits came in 0.6 (CUDA graphs in 0.14)', allow_module_level=True)

BOUND = 512
IN_BOUND = GenerationSettings(max_new_tokens=40, max_crops=1)   # 313 image tokens + 40


@pytest.fixture(scope='module')
def longrope_model(tmp_path_factory):
    from phi3v_ros.tools.make_tiny_model import make_tiny_model
    return str(make_tiny_model(tmp_path_factory.mktemp('longrope') / 'model', seed=0,
                               context_length=2048, layout='auto', longrope_original=BOUND))


@pytest.fixture
def model(longrope_model, tmp_path):
    """Copy the model for each test (the prepared folder is made beside it)."""
    copy = tmp_path / 'model'
    shutil.copytree(longrope_model, copy)
    return str(copy)


def fingerprint(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), 'rb').read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def decoder_graph(folder):
    with open(os.path.join(folder, 'genai_config.json')) as f:
        name = json.load(f)['model']['decoder']['filename']
    return onnx.load(os.path.join(folder, name), load_external_data=False).graph


def prepare(model, log=None):
    said = [] if log is None else log
    return graph_decoder.prepare_for_graph(model, graph_decoder.logits_check(og, 'cpu'),
                                           said.append)


def test_the_switch_is_found_where_the_builder_puts_it(model, tiny_model):
    switch = graph_decoder.rope_switch(decoder_graph(model))
    assert switch is not None and switch.op_type == 'If'
    assert list(switch.output) == ['cos_cache', 'sin_cache']
    assert graph_decoder.rope_switch(decoder_graph(tiny_model)) is None   # no LongRoPE
    assert prepare(tiny_model) is None                                   # nothing to prepare
    assert not os.path.exists(graph_decoder.prepared_folder(tiny_model))


def test_prepared_once_beside_the_model_which_is_left_as_it_was(model):
    before, said = fingerprint(model), []
    folder = prepare(model, said)
    assert folder == model + '.cuda-graph' and fingerprint(model) == before
    assert any('preparing' in line for line in said), said
    assert any('largest difference 0' in line for line in said), said
    # no control flow left; every file but the decoder's graph and the config is a hard link
    graph = decoder_graph(folder)
    assert not [n for n in graph.node if n.op_type in graph_decoder.CONTROL_FLOW]
    assert not [n for n in graph.node if n.op_type == 'Greater']   # its condition, unread
    for name in os.listdir(model):
        linked = os.stat(os.path.join(model, name)).st_ino == \
            os.stat(os.path.join(folder, name)).st_ino
        assert linked == (name not in ('text.onnx', 'genai_config.json')), name
    with open(os.path.join(folder, 'genai_config.json')) as f:
        assert json.load(f)['model']['context_length'] == BOUND
    assert graph_decoder.bound(folder) == BOUND and graph_decoder.bound(model) is None
    # made once: a second start finds it and makes nothing
    made_at = os.stat(os.path.join(folder, graph_decoder.MANIFEST)).st_mtime_ns
    again = []
    assert prepare(model, again) == folder and again == []
    assert os.stat(os.path.join(folder, graph_decoder.MANIFEST)).st_mtime_ns == made_at
    assert not [name for name in os.listdir(os.path.dirname(model)) if '.tmp-' in name]


def test_answers_within_the_bound_are_those_of_the_original(model):
    folder = prepare(model)
    original = Engine(EngineConfig(model_path=model, provider='cpu'))
    prepared = Engine(EngineConfig(model_path=folder, provider='cpu'))
    assert (original.graph_bound, prepared.graph_bound) == (None, BOUND)
    for side in (200, 336):
        request = Request(prompt='What is on the table?', images=(gradient_image(side, side),),
                          settings=IN_BOUND)
        expected, got = original.generate(request), prepared.generate(request)
        assert expected.ok and got.ok, (expected.error, got.error)
        assert expected.prompt_tokens + expected.generated_tokens <= BOUND
        assert got.text == expected.text and got.generated_tokens == expected.generated_tokens


def test_a_request_past_the_bound_is_refused_up_front_with_what_to_do(model):
    prepared = Engine(EngineConfig(model_path=prepare(model), provider='cpu'))
    request = Request(prompt='Describe everything.', images=(gradient_image(336, 336),),
                      settings=GenerationSettings(max_new_tokens=400, max_crops=1))
    result = prepared.generate(request)
    assert not result.ok and result.generated_tokens == 0
    assert f'at most {BOUND} tokens' in result.error and 'cuda_graph false' in result.error
    assert 'max_new_tokens 400' in result.error, result.error
    # the original runs past it (its long-factor caches): the bound is the prepared one's only
    original = Engine(EngineConfig(model_path=model, provider='cpu')).generate(request)
    assert original.ok and original.prompt_tokens + original.generated_tokens > BOUND


def test_logits_that_differ_are_caught_and_nothing_is_left(model, monkeypatch):
    """A transformation that took the wrong branch (the long-factor caches) is not used."""
    right = graph_decoder.without_switch

    def wrong(decoder):
        switch = next(n for n in decoder.graph.node if n.op_type == 'If')
        branches = {a.name: a for a in switch.attribute}
        long_caches = onnx.GraphProto()
        long_caches.CopyFrom(branches['then_branch'].g)
        branches['else_branch'].g.CopyFrom(long_caches)
        return right(decoder)

    monkeypatch.setattr(graph_decoder, 'without_switch', wrong)
    with pytest.raises(NotPreparable, match='logits differ'):
        prepare(model)
    assert not os.path.exists(model + '.cuda-graph')
    assert not [name for name in os.listdir(os.path.dirname(model)) if '.tmp-' in name]


def test_a_changed_model_folder_is_prepared_again(model):
    folder = prepare(model)
    with open(os.path.join(model, 'tokenizer_config.json'), 'a') as f:
        f.write('\n')
    said = []
    assert prepare(model, said) == folder and any('preparing' in line for line in said)
    assert graph_decoder.bound(folder) == BOUND


def test_a_folder_there_that_is_not_ours_is_never_touched(model):
    theirs = model + '.cuda-graph'
    os.makedirs(theirs)
    with open(os.path.join(theirs, 'notes.txt'), 'w') as f:
        f.write('mine')
    with pytest.raises(NotPreparable, match='not made by phi3v_ros'):
        prepare(model)
    assert os.listdir(theirs) == ['notes.txt']


def test_control_flow_of_another_shape_is_not_prepared(model):
    from onnx import helper
    path = os.path.join(model, 'text.onnx')
    decoder = onnx.load(path)
    switch = next(n for n in decoder.graph.node if n.op_type == 'If')
    branch = next(a for a in switch.attribute if a.name == 'else_branch').g
    branch.node[0].CopyFrom(helper.make_node('Identity', ['cos_cache_large'],
                                             list(branch.node[0].output)))
    onnx.save(decoder, path)
    with pytest.raises(NotPreparable, match='not LongRoPE'):
        prepare(model)


@pytest.fixture
def as_if_on_cuda(monkeypatch):
    """Let the worker's graph_config run here: CUDA resolved, the check run on the CPU."""
    from phi3v_ros.engine import worker
    check = graph_decoder.logits_check
    monkeypatch.setattr(worker, 'resolve_provider', lambda requested, available: 'cuda')
    monkeypatch.setattr(graph_decoder, 'logits_check',
                        lambda og_, provider, device_id: check(og_, 'cpu', device_id))
    return worker


def test_the_worker_loads_the_prepared_folder_with_the_graph(model, as_if_on_cuda):
    said = []
    config, refused = as_if_on_cuda.graph_config(
        EngineConfig(model_path=model, provider='cuda', cuda_graph=True), said.append)
    assert refused is None and config.cuda_graph and config.model_path == model + '.cuda-graph'
    assert as_if_on_cuda.graph_state(True, 'cuda', None, BOUND) == \
        f'on (prepared decoder, {BOUND} tokens)'
    # without the graph, nothing is prepared or changed
    plain = EngineConfig(model_path=model, provider='cuda', cuda_graph=False)
    assert as_if_on_cuda.graph_config(plain, said.append) == (plain, None)


def test_the_worker_turns_the_graph_off_with_the_reason_where_it_cannot_prepare(
        model, as_if_on_cuda):
    os.makedirs(model + '.cuda-graph')     # somebody else's folder is in the way
    said = []
    config, refused = as_if_on_cuda.graph_config(
        EngineConfig(model_path=model, provider='cuda', cuda_graph=True), said.append)
    assert not config.cuda_graph and config.model_path == model
    assert 'not made by phi3v_ros' in refused and any('cuda_graph: off' in s for s in said)
    assert as_if_on_cuda.graph_state(True, 'cuda', refused).startswith('off: ')
