"""Tests of phi3v_ros.tools.make_tiny_model against the real onnxruntime-genai phi3v pipeline."""
from __future__ import annotations

from contextlib import redirect_stdout
import io
import json
import pathlib
import string
import time
from typing import List, Optional, Tuple

import numpy as np
import pytest

og = pytest.importorskip('onnxruntime_genai')
cv2 = pytest.importorskip('cv2')

# after the skips (it needs onnx): E402, and I100 since it cannot sort above pytest
from phi3v_ros.tools import make_tiny_model as mtm  # noqa: E402, I100

IMAGE_PROMPT = '<|user|>\n<|image_1|>\nWhat is this?<|end|>\n<|assistant|>\n'
TEXT_PROMPT = '<|user|>\nWhat is this?<|end|>\n<|assistant|>\n'
CROP = 336


# ------------------------------------------------------------------------------------------------
# helpers and fixtures
# ------------------------------------------------------------------------------------------------

def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.png', img)
    assert ok
    return buf.tobytes()


def solid(h: int, w: int, bgr: Tuple[int, int, int]) -> bytes:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bgr
    return png(img)


def checkerboard(h: int, w: int, cell: int = 60) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    img = (((yy // cell + xx // cell) % 2) * 255).astype(np.uint8)
    return png(np.repeat(img[..., None], 3, axis=-1))


def gradient(h: int, w: int) -> bytes:
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1))
    return png(np.stack([ramp, 255 - ramp, ramp * 0.5], axis=-1).astype(np.uint8))


def tokens_per_image(padded_h: int, padded_w: int) -> int:
    h, w = padded_h // CROP, padded_w // CROP
    return (h * w + 1) * 144 + 1 + (h + 1) * 12


class Loaded:
    def __init__(self, path: pathlib.Path) -> None:
        if not hasattr(og, 'Config') or not hasattr(og.NamedTensors, 'keys'):
            pytest.skip('these tests drive the API of onnxruntime-genai 0.7+ directly (og.Config, '
                        f'readable NamedTensors), not {og.__version__}; test_engine*.py and '
                        'test_tiny_model_layouts.py run the tiny model on it')
        self.path = path
        start = time.perf_counter()
        self.model = og.Model(og.Config(str(path)))
        self.load_s = time.perf_counter() - start
        self.processor = self.model.create_multimodal_processor()
        self.tokenizer = og.Tokenizer(self.model)
        self.config = json.loads((path / 'genai_config.json').read_text())

    def inputs(self, prompt: str, *blobs: bytes):
        images = og.Images.open_bytes(*blobs) if blobs else None
        return self.processor(prompt, images=images)

    def generate(self, prompt: str, *blobs: bytes, new_tokens: int = 20,
                 **search) -> Tuple[dict, List[int], float]:
        """
        Generate greedily with max_length = prompt + new_tokens.

        Returns (inputs, tokens, ttft_s).
        """
        start = time.perf_counter()
        inputs = self.inputs(prompt, *blobs)
        prompt_len = inputs['input_ids'].as_numpy().shape[-1]
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=prompt_len + new_tokens, **search)
        gen = og.Generator(self.model, params)
        gen.set_inputs(inputs)
        tokens: List[int] = []
        ttft: Optional[float] = None
        while not gen.is_done():
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            if ttft is None:
                ttft = time.perf_counter() - start
        del gen
        arrays = {name: inputs[name].as_numpy() for name in inputs.keys()}
        return arrays, tokens, ttft or 0.0


@pytest.fixture(scope='session')
def model_dir(tmp_path_factory) -> pathlib.Path:
    return mtm.make_tiny_model(tmp_path_factory.mktemp('tiny') / 'model', seed=0)


@pytest.fixture(scope='session')
def tiny(model_dir) -> Loaded:
    return Loaded(model_dir)


@pytest.fixture(scope='session')
def tiny_end(tmp_path_factory) -> Loaded:
    return Loaded(mtm.make_tiny_model(tmp_path_factory.mktemp('tiny_end'), seed=0,
                                      end_immediately=True))


# ------------------------------------------------------------------------------------------------
# files, configs, tokenizer
# ------------------------------------------------------------------------------------------------

def test_files_present_small_and_configs(model_dir):
    sizes = {name: (model_dir / name).stat().st_size for name in mtm.FILES}
    assert all(size > 0 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 1_000_000, sizes

    cfg = json.loads((model_dir / 'genai_config.json').read_text())
    model = cfg['model']
    assert model['type'] == 'phi3v'
    assert model['context_length'] == 4096
    filenames = [model[part]['filename'] for part in ('vision', 'embedding', 'decoder')]
    assert filenames == ['vision.onnx', 'embedding.onnx', 'text.onnx']
    decoder = model['decoder']
    assert decoder['hidden_size'] == decoder['head_size'] * decoder['num_attention_heads']
    assert cfg['search']['max_length'] == 4096 and cfg['search']['do_sample'] is False

    tok = json.loads((model_dir / 'tokenizer.json').read_text())
    ids = {entry['content']: entry['id'] for entry in tok['added_tokens']}
    assert model['eos_token_id'] == ids['<|end|>'] == 1007
    assert model['bos_token_id'] == ids['<s>'] == 1
    assert model['pad_token_id'] == ids['<|endoftext|>'] == 1000
    for name in ('<unk>', '</s>', '<|system|>', '<|user|>', '<|assistant|>', '<|image_1|>'):
        assert name in ids
    assert tok['model']['type'] == 'BPE' and tok['model']['byte_fallback'] is True
    assert tok['model']['vocab']['<0x0A>'] == 13
    assert max(ids.values()) < model['vocab_size']

    proc = json.loads((model_dir / 'processor_config.json').read_text())
    kinds = [t['operation']['type'] for t in proc['processor']['transforms']]
    assert kinds == ['DecodeImage', 'ConvertRGB', 'Phi3ImageTransform']
    assert proc['processor']['transforms'][0]['operation']['attrs']['color_space'] == 'BGR'
    tokenizer_config = json.loads((model_dir / 'tokenizer_config.json').read_text())
    assert tokenizer_config['tokenizer_class'] == 'LlamaTokenizer'


def test_text_graph_uses_group_query_attention(model_dir):
    onnx = pytest.importorskip('onnx')
    text = onnx.load(str(model_dir / 'text.onnx'))
    gqa = [n for n in text.graph.node if n.op_type == 'GroupQueryAttention']
    assert len(gqa) == 2 and all(n.domain == 'com.microsoft' for n in gqa)
    names = {i.name for i in text.graph.input}
    assert {'inputs_embeds', 'attention_mask', 'past_key_values.1.value'} <= names
    assert {o.name for o in text.graph.output} >= {'logits', 'present.0.key', 'present.1.value'}


def test_same_seed_identical_files_other_seed_differs(model_dir, tmp_path):
    again = mtm.make_tiny_model(tmp_path / 'again', seed=0)
    for name in mtm.FILES:
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name
    other = mtm.make_tiny_model(tmp_path / 'other', seed=1)
    assert (other / 'text.onnx').read_bytes() != (model_dir / 'text.onnx').read_bytes()
    assert (other / 'vision.onnx').read_bytes() != (model_dir / 'vision.onnx').read_bytes()


def test_tokenizer_matches_hugging_face(tiny):
    tokenizers = pytest.importorskip('tokenizers')
    hf = tokenizers.Tokenizer.from_file(str(tiny.path / 'tokenizer.json'))
    for text in ('The robot sees a red cup.', 'Is it safe? Yes, the floor is wet; 42 items!',
                 'Zebra \u00fcber naive \U0001F600',
                 '<|user|>\nWhat is this?<|end|>\n<|assistant|>\n'):
        ours = [int(t) for t in tiny.tokenizer.encode(text)]
        assert ours == hf.encode(text, add_special_tokens=False).ids, text
    assert tiny.tokenizer.decode(tiny.tokenizer.encode('a red cup')).strip() == 'a red cup'


# ------------------------------------------------------------------------------------------------
# the real pipeline
# ------------------------------------------------------------------------------------------------

def test_loads_quickly(tiny):
    print(f'load {tiny.load_s * 1e3:.0f} ms')
    assert tiny.load_s < 2.0


def test_text_only_generation_respects_max_length(tiny):
    inputs, tokens, _ = tiny.generate(TEXT_PROMPT, new_tokens=20)
    assert set(inputs) == {'input_ids'}
    assert (inputs['input_ids'] >= 0).all()
    # stops exactly at the per-request max_length, never at <|end|>
    assert len(tokens) == 20
    assert tiny.config['model']['eos_token_id'] not in tokens
    _, again, _ = tiny.generate(TEXT_PROMPT, new_tokens=20)
    assert again == tokens


@pytest.mark.parametrize('height, width',
                         [(1, 1), (16, 16), (480, 640), (1080, 1920), (1920, 480), (300, 2000)])
def test_one_image_any_size(tiny, height, width):
    rng = np.random.default_rng(height * 7 + width)
    blob = png(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    inputs, tokens, _ = tiny.generate(IMAGE_PROMPT, blob, new_tokens=8)
    assert (inputs['pixel_values'].shape[0] == 1
            and inputs['pixel_values'].shape[2:] == (3, CROP, CROP))
    padded_h, padded_w = (int(v) for v in inputs['image_sizes'].reshape(-1))
    expected = tokens_per_image(padded_h, padded_w)
    assert int(inputs['num_image_tokens'].sum()) == expected
    assert int((inputs['input_ids'] < 0).sum()) == expected
    assert len(tokens) == 8


def test_vision_and_embedding_graphs_directly(tiny):
    ort = pytest.importorskip('onnxruntime')
    inputs = tiny.inputs('<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\n',
                         checkerboard(480, 640), gradient(640, 480))
    pixel_values = inputs['pixel_values'].as_numpy()
    image_sizes = inputs['image_sizes'].as_numpy()
    num_tokens = inputs['num_image_tokens'].as_numpy()
    assert pixel_values.shape[0] == 2
    vision = ort.InferenceSession(str(tiny.path / 'vision.onnx'),
                                  providers=['CPUExecutionProvider'])
    (features,) = vision.run(None, {'pixel_values': pixel_values, 'image_sizes': image_sizes})
    hidden = tiny.config['model']['decoder']['hidden_size']
    assert features.shape == (int(num_tokens.sum()), hidden)
    assert features.shape[0] == sum(tokens_per_image(int(h), int(w)) for h, w in image_sizes)

    embedding = ort.InferenceSession(str(tiny.path / 'embedding.onnx'),
                                     providers=['CPUExecutionProvider'])
    ids = np.array([[5, 6, 7]], np.int64)
    no_rows = np.zeros((0, hidden), np.float32)
    (text_only,) = embedding.run(None, {'input_ids': ids, 'image_features': no_rows})
    assert text_only.shape == (1, 3, hidden)
    mixed_ids = np.array([[5, -1, -1, 7]], np.int64)
    rows = np.arange(2 * hidden, dtype=np.float32).reshape(2, hidden)
    (mixed,) = embedding.run(None, {'input_ids': mixed_ids, 'image_features': rows})
    np.testing.assert_array_equal(mixed[0, 1:3], rows)
    np.testing.assert_array_equal(mixed[0, 0], text_only[0, 0])


def test_two_images_generate(tiny):
    prompt = '<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\n'
    inputs, tokens, _ = tiny.generate(prompt, checkerboard(480, 640), gradient(640, 480),
                                      new_tokens=5)
    assert int((inputs['input_ids'] < 0).sum()) == int(inputs['num_image_tokens'].sum())
    assert len(tokens) == 5


def test_different_images_give_different_tokens(tiny):
    images = {
        'red': solid(480, 640, (0, 0, 255)),
        'blue': solid(480, 640, (255, 0, 0)),
        'checker': checkerboard(480, 640),
        'gradient': gradient(480, 640),
    }
    outputs = {name: tuple(tiny.generate(IMAGE_PROMPT, blob, new_tokens=20)[1])
               for name, blob in images.items()}
    assert len(set(outputs.values())) == len(images), outputs
    _, again, _ = tiny.generate(IMAGE_PROMPT, images['red'], new_tokens=20)
    assert tuple(again) == outputs['red']


def test_share_buffer_on_and_off_agree(tiny):
    blob = checkerboard(480, 640)
    _, shared, _ = tiny.generate(IMAGE_PROMPT, blob, new_tokens=10, past_present_share_buffer=True)
    _, separate, _ = tiny.generate(IMAGE_PROMPT, blob, new_tokens=10,
                                   past_present_share_buffer=False)
    assert shared == separate


def test_readable_greedy_text(tiny):
    _, tokens, _ = tiny.generate(TEXT_PROMPT, new_tokens=30)
    text = tiny.tokenizer.decode(tokens)
    stream = tiny.tokenizer.create_stream()
    assert ''.join(stream.decode(t) for t in tokens) == text
    assert text.isprintable() and '\ufffd' not in text
    letters = sum(ch in string.ascii_letters or ch == ' ' for ch in text)
    assert letters / len(text) > 0.9, text
    words = text.split()
    assert len(words) >= 20 and len(set(words)) >= 5, text
    _, image_tokens, _ = tiny.generate(IMAGE_PROMPT, gradient(480, 640), new_tokens=30)
    image_text = tiny.tokenizer.decode(image_tokens)
    assert image_text.isprintable() and len(set(image_text.split())) >= 3, image_text


def test_end_immediately(tiny_end):
    eos = tiny_end.config['model']['eos_token_id']
    _, tokens, _ = tiny_end.generate(TEXT_PROMPT, new_tokens=20)
    assert tokens == [eos]
    _, tokens, _ = tiny_end.generate(IMAGE_PROMPT, checkerboard(480, 640), new_tokens=20)
    assert tokens == [eos]


def test_time_to_first_token_640x480(tiny):
    blob = gradient(480, 640)
    tiny.generate(IMAGE_PROMPT, blob, new_tokens=1)  # warm-up
    ttft = min(tiny.generate(IMAGE_PROMPT, blob, new_tokens=1)[2] for _ in range(2))
    print(f'TTFT 640x480: {ttft * 1e3:.0f} ms')
    assert ttft < 3.0


def test_cli_main_writes_folder(tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        assert mtm.main([str(tmp_path / 'cli'), '--seed', '3', '--end-immediately']) == 0
    path = pathlib.Path(out.getvalue().strip())
    assert path == (tmp_path / 'cli').resolve()
    assert all((path / name).is_file() for name in mtm.FILES)
    bias_model = mtm.make_tiny_model(tmp_path / 'api', seed=3, end_immediately=True)
    assert (bias_model / 'text.onnx').read_bytes() == (path / 'text.onnx').read_bytes()
