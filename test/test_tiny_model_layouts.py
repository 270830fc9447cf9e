"""
make_tiny_model's two folder layouts: Nov-2024 (onnxruntime-genai 0.5+) and May-2024 (0.4).

The graphs run through onnxruntime directly (every release's onnxruntime), so both layouts are
checked in every CI leg; the installed onnxruntime-genai then answers from the layout it reads
(the engine's tests) and refuses the other (test_engine_releases.py).
"""
import json

import numpy as np
import pytest

ort = pytest.importorskip('onnxruntime')
mtm = pytest.importorskip('phi3v_ros.tools.make_tiny_model')

HIDDEN = 64
CPU = ['CPUExecutionProvider']


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('layouts')
    return {layout: mtm.make_tiny_model(root / layout, seed=0, layout=layout)
            for layout in mtm.LAYOUTS}


def config(folder):
    return json.loads((folder / 'genai_config.json').read_text())['model']


def session(folder, name):
    return ort.InferenceSession(str(folder / name), providers=CPU)


def test_configs_differ_in_the_keys_each_release_knows(folders):
    nov, may = config(folders['nov2024']), config(folders['may2024'])
    assert nov['vision']['outputs'] == {'image_features': 'image_features'}
    assert nov['embedding']['inputs'] == {'input_ids': 'input_ids',
                                          'image_features': 'image_features'}
    assert may['vision']['outputs'] == {'visual_features': 'visual_features'}
    assert may['embedding']['inputs'] == {'input_ids': 'input_ids'}
    for section in ('decoder', 'vision', 'embedding'):
        assert nov[section]['filename'] == may[section]['filename']
    without = {key: value for key, value in nov.items() if key not in ('vision', 'embedding')}
    assert without == {key: value for key, value in may.items()
                       if key not in ('vision', 'embedding')}


def test_may2024_tokenizer_has_string_merges_and_tokenizes_the_same(folders):
    tokenizers = pytest.importorskip('tokenizers')
    may = json.loads((folders['may2024'] / 'tokenizer.json').read_text())
    assert may['model']['merges'] and all(isinstance(m, str) and m.count(' ') == 1
                                          for m in may['model']['merges'])
    text = '<|user|>\n<|image_1|>\nWhat is on the table? A red cup.<|end|>\n<|assistant|>\n'
    ids = [tokenizers.Tokenizer.from_file(str(folders[layout] / 'tokenizer.json')).encode(text).ids
           for layout in mtm.LAYOUTS]
    assert ids[0] == ids[1]


def test_the_decoder_and_the_weights_are_the_same(folders):
    assert ((folders['nov2024'] / 'text.onnx').read_bytes()
            == (folders['may2024'] / 'text.onnx').read_bytes())


def test_may2024_vision_gives_the_same_rows_with_a_batch_axis(folders):
    rng = np.random.default_rng(3)
    pixel_values = rng.standard_normal((1, 17, 3, 336, 336)).astype(np.float32)
    image_sizes = np.array([[1008, 1344]], np.int64)       # 3 x 4 crops: 1,921 rows
    feeds = {'pixel_values': pixel_values, 'image_sizes': image_sizes}
    (rows,) = session(folders['nov2024'], 'vision.onnx').run(['image_features'], feeds)
    (batched,) = session(folders['may2024'], 'vision.onnx').run(['visual_features'], feeds)
    assert rows.shape == (1921, HIDDEN)
    assert batched.shape == (1, 1921, HIDDEN)
    np.testing.assert_array_equal(batched[0], rows)


def test_may2024_embedding_takes_ids_only_and_embeds_image_slots_as_id_0(folders):
    ids = np.array([[5, -1, -1, 7]], np.int64)
    may = session(folders['may2024'], 'embedding.onnx')
    assert [i.name for i in may.get_inputs()] == ['input_ids']
    (embeds,) = may.run(None, {'input_ids': ids})
    nov = session(folders['nov2024'], 'embedding.onnx')
    (text,) = nov.run(None, {'input_ids': np.array([[5, 0, 0, 7]], np.int64),
                             'image_features': np.zeros((0, HIDDEN), np.float32)})
    assert embeds.shape == (1, 4, HIDDEN)
    np.testing.assert_array_equal(embeds, text)


def test_layout_is_checked_and_auto_follows_the_installed_release(tmp_path):
    with pytest.raises(ValueError, match='layout must be one of'):
        mtm.make_tiny_model(tmp_path / 'bad', layout='2023')
    auto = mtm.make_tiny_model(tmp_path / 'auto', layout='auto')
    expected = 'visual_features' if mtm.layout_for_genai() == 'may2024' else 'image_features'
    assert list(config(auto)['vision']['outputs']) == [expected]


def test_cli_writes_the_may2024_layout(tmp_path, capsys):
    assert mtm.main([str(tmp_path / 'cli'), '--layout', 'may2024']) == 0
    folder = tmp_path / 'cli'
    assert capsys.readouterr().out.strip() == str(folder.resolve())
    assert all((folder / name).is_file() for name in mtm.FILES)
    assert 'visual_features' in config(folder)['vision']['outputs']
