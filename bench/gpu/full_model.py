"""
Build a full-size, random-weight model in the Phi-3-vision (phi3v) folder layout.

It is made for the GPU measurements. Runs on the lent GPU machine (no network): torch +
transformers + onnxruntime-genai's model builder for the decoder, numpy + onnx for the rest.

- text:      transformers' Phi3ForCausalLM with Phi-3-vision's text dimensions (vocab 32064,
             hidden 3072, MLP 8192, 32 layers, 32 heads, 32 KV heads; 4096 rotary positions,
             context_length 131072 in genai_config as published), random weights, through
             `onnxruntime_genai.models.builder -p int4 -e cuda
             --extra_options exclude_embeds=true`.
- vision:    a CLIP ViT-L/14 at 336 px (width 1024, 16 heads, MLP 4096; 23 of its 24 layers run,
             as Phi-3-vision reads the penultimate layer), over every crop the processor makes (17
             per image), the 2x2 patch merge to 4096 and the projection MLP to 3072, then
             Phi-3-vision's row layout: exactly sum(num_image_tokens) rows. fp16 inside, float32
             pixel_values in.
- embedding: a 32064 x 3072 fp16 table; negative ids take image rows in order.
- tokenizer and processor config: the tiny model's (a small real BPE); the decoder's lm_head rows
  past that vocabulary and the end token's row are zeroed, so every answer decodes and runs
  max_new_tokens.

    # on the GPU machine, about 2 minutes
    python bench/gpu/full_model.py --out /tmp/phi3v_full
    # any machine: small dims, CPU, float32
    python bench/gpu/full_model.py --out /tmp/small --small
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from onnx import helper, TensorProto

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from phi3v_ros.tools.make_tiny_model import make_tiny_model  # noqa: E402
from phi3v_ros.tools.tiny_model_graphs import (  # noqa: E402
    _Graph, build_embedding, CROP_SIZE, Dims, phi3v_row_sources)

PATCH = 14
GRID = CROP_SIZE // PATCH            # 24 x 24 patches per crop
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json')
BOS, EOS, PAD = 1, 32007, 32000      # the published Phi-3-vision ids


# The rope scaling of microsoft/Phi-3-vision-128k-instruct's config.json ("type": "su", i.e.
# LongRoPE; original_max_position_embeddings 4096, max_position_embeddings 131072, rope_theta
# 10000), as reproduced in two public test suites that build models from it:
# huggingface/diffusers tests/pipelines/omnigen/test_pipeline_omnigen.py ("_name_or_path":
# "Phi-3-vision-128k-instruct") and mlx-vlm's phi3_v model test. 48 values each: one per pair of
# the 96-wide head.
PHI3V_LONG_FACTOR = (
    1.0299999713897705, 1.0499999523162842, 1.0499999523162842, 1.0799999237060547,
    1.2299998998641968, 1.2299998998641968, 1.2999999523162842, 1.4499999284744263,
    1.5999999046325684, 1.6499998569488525, 1.8999998569488525, 2.859999895095825,
    3.68999981880188, 5.419999599456787, 5.489999771118164, 5.489999771118164,
    9.09000015258789, 11.579999923706055, 15.65999984741211, 15.769999504089355,
    15.789999961853027, 18.360000610351562, 21.989999771118164, 23.079999923706055,
    30.009998321533203, 32.35000228881836, 32.590003967285156, 35.56000518798828,
    39.95000457763672, 53.840003967285156, 56.20000457763672, 57.95000457763672,
    59.29000473022461, 59.77000427246094, 59.920005798339844, 61.190006256103516,
    61.96000671386719, 62.50000762939453, 63.3700065612793, 63.48000717163086,
    63.48000717163086, 63.66000747680664, 63.850006103515625, 64.08000946044922,
    64.760009765625, 64.80001068115234, 64.81001281738281, 64.81001281738281)
PHI3V_SHORT_FACTOR = (
    (1.05,) * 3 + (1.1,) * 3 + (1.2500000000000002,) * 2
    + (1.4000000000000004, 1.4500000000000004, 1.5500000000000005, 1.8500000000000008,
       1.9000000000000008)
    + (2.000000000000001,) * 19 + (2.1000000000000005,) * 2 + (2.2,)
    + (2.3499999999999996,) * 4 + (2.3999999999999995,) * 2
    + (2.6499999999999986, 2.6999999999999984, 2.8999999999999977, 2.9499999999999975)
    + (3.049999999999997,) * 3)
assert len(PHI3V_LONG_FACTOR) == len(PHI3V_SHORT_FACTOR) == 48


@dataclasses.dataclass(frozen=True)
class Sizes:
    vocab: int = 32064
    hidden: int = 3072
    intermediate: int = 8192
    layers: int = 32
    heads: int = 32
    # 4096 and no rope scaling: one rotary cache, no control flow (above 4096 without scaling
    # the builder fails); longrope: the published model's (131072 positions, 4096 original, the
    # factors above), which the builder writes as an If between two caches
    rope_positions: int = 4096
    longrope: bool = False
    # what the published genai_config says; answers here stay far below 4096
    context: int = 131072
    vit_width: int = 1024
    vit_heads: int = 16
    vit_mlp: int = 4096
    vit_layers_run: int = 23
    dtype: type = np.float16


SMALL = Sizes(vocab=1024, hidden=64, intermediate=128, layers=2, heads=4, context=8192,
              vit_width=64, vit_heads=4, vit_mlp=128, vit_layers_run=2, dtype=np.float32)


def build_vision(sizes: Sizes, seed: int = 0):
    """ViT-L/14-336 over all crops, 2x2 merge, projection, Phi-3-vision row layout."""
    rng = np.random.default_rng(seed)
    dt = sizes.dtype
    g = _Graph('phi3v_full_vision')
    i64 = np.int64
    width, heads = sizes.vit_width, sizes.vit_heads
    head = width // heads

    def weight(shape, scale=0.02):
        return g.const((rng.standard_normal(shape) * scale).astype(dt))

    def layer_norm(x):
        return g.op('LayerNormalization',
                    [x, g.const(np.ones(width, dt)), g.const(np.zeros(width, dt))],
                    axis=-1, epsilon=1e-5)

    crops = g.op('Reshape',
                 ['pixel_values', g.const(np.array([-1, 3, CROP_SIZE, CROP_SIZE], i64))])
    crops = g.op('Cast', [crops], to=helper.np_dtype_to_tensor_dtype(np.dtype(dt)))
    x = g.op('Conv', [crops, weight((width, 3, PATCH, PATCH))],
             strides=[PATCH, PATCH])                                             # [M, W, 24, 24]
    x = g.op('Transpose', [g.op('Reshape', [x, g.const(np.array([0, width, -1], i64))])],
             perm=[0, 2, 1])
    batch = g.op('Gather', [g.op('Shape', [x]), g.const(np.array([0], i64))], axis=0)   # [1] = M
    cls = g.op('Expand', [weight((1, 1, width)),
                          g.op('Concat', [batch, g.const(np.array([1, width], i64))], axis=0)])
    x = g.op('Add', [g.op('Concat', [cls, x], axis=1), weight((GRID * GRID + 1, width))])
    x = layer_norm(x)
    split_heads = g.const(np.array([0, 0, heads, head], i64))
    merge_heads = g.const(np.array([0, 0, width], i64))
    for _ in range(sizes.vit_layers_run):
        h = layer_norm(x)
        q, k, v = (g.op('Transpose',
                        [g.op('Reshape',
                              [g.op('Add', [g.op('MatMul', [h, weight((width, width))]),
                                            weight((width,))]),
                               split_heads])],
                        perm=[0, 2, 1, 3]) for _ in range(3))
        scores = g.op('Mul', [g.op('MatMul', [q, g.op('Transpose', [k], perm=[0, 1, 3, 2])]),
                              g.const(np.array(head ** -0.5, dt))])
        attn = g.op('MatMul', [g.op('Softmax', [scores], axis=-1), v])
        attn = g.op('Reshape', [g.op('Transpose', [attn], perm=[0, 2, 1, 3]), merge_heads])
        x = g.op('Add', [x, g.op('Add', [g.op('MatMul', [attn, weight((width, width))]),
                                         weight((width,))])])
        h = layer_norm(x)
        up = g.op('Add', [g.op('MatMul', [h, weight((width, sizes.vit_mlp))]),
                          weight((sizes.vit_mlp,))])
        # quick GELU
        act = g.op('Mul', [up, g.op('Sigmoid', [g.op('Mul', [up, g.const(np.array(1.702, dt))])])])
        x = g.op('Add', [x, g.op('Add', [g.op('MatMul', [act, weight((sizes.vit_mlp, width))]),
                                         weight((width,))])])
    patches = g.op('Slice', [x, g.const(np.array([1], i64)),
                             g.const(np.array([GRID * GRID + 1], i64)),
                             g.const(np.array([1], i64))])                            # drop CLS
    half = GRID // 2
    merged = g.op('Reshape', [patches, g.const(np.array([-1, half, 2, half, 2, width], i64))])
    merged = g.op('Transpose', [merged], perm=[0, 1, 3, 2, 4, 5])
    merged = g.op('Reshape', [merged, g.const(np.array([-1, 4 * width], i64))])   # [M * 144, 4W]
    up = g.op('Add', [g.op('MatMul', [merged, weight((4 * width, sizes.hidden))]),
                      weight((sizes.hidden,))])
    gelu = g.op('Mul', [
        g.op('Mul', [up, g.const(np.array(0.5, dt))]),
        g.op('Add', [g.op('Erf', [g.op('Mul', [up, g.const(np.array(2 ** -0.5, dt))])]),
                     g.const(np.array(1.0, dt))])])
    features = g.op('Add', [g.op('MatMul', [gelu, weight((sizes.hidden, sizes.hidden))]),
                            weight((sizes.hidden,))])                          # [M * 144, hidden]
    _, patch_index = phi3v_row_sources(g)
    g.op('Gather', [features, patch_index], axis=0, outputs=['image_features'])
    inputs = [
        helper.make_tensor_value_info('pixel_values', TensorProto.FLOAT,
                                      ['num_images', 'max_num_crops', 3, CROP_SIZE, CROP_SIZE]),
        helper.make_tensor_value_info('image_sizes', TensorProto.INT64, ['num_images', 2]),
    ]
    outputs = [helper.make_tensor_value_info('image_features',
                                             helper.np_dtype_to_tensor_dtype(np.dtype(dt)),
                                             ['num_image_tokens', sizes.hidden])]
    return g.model(inputs, outputs)


def build_embedding_table(sizes: Sizes, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((sizes.vocab, sizes.hidden)) * 0.02).astype(sizes.dtype)


def with_longrope(config_file: str) -> None:
    """
    Give a saved Phi3 config.json the published model's rope scaling (the builder reads it there).

    Rotary embeddings have no weights, so the saved model is the same; written into the file
    rather than through Phi3Config, whose rope arguments changed between transformers releases.
    The builder reads both 'rope_type' (is it LongRoPE?) and 'type' (its magnitude scaling).
    """
    with open(config_file) as f:
        config = json.load(f)
    scaling = {'type': 'longrope', 'rope_type': 'longrope',
               'long_factor': list(PHI3V_LONG_FACTOR), 'short_factor': list(PHI3V_SHORT_FACTOR)}
    config.update({'max_position_embeddings': 131072, 'original_max_position_embeddings': 4096,
                   'rope_scaling': scaling})
    if 'rope_parameters' in config:      # transformers 5 keeps rope_theta there too
        config['rope_parameters'] = dict(scaling, rope_theta=10000.0)
    with open(config_file, 'w') as f:
        json.dump(config, f, indent=2)
    print(f'decoder: LongRoPE written into {config_file}', flush=True)


def build_decoder(sizes: Sizes, tokenizer_dir: str, tokenizer_vocab: int, work: str, out: str,
                  precision: str, execution_provider: str) -> dict:
    """Random Phi3ForCausalLM -> onnxruntime-genai builder; returns the builder's genai_config."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM
    config = Phi3Config(vocab_size=sizes.vocab, hidden_size=sizes.hidden,
                        intermediate_size=sizes.intermediate, num_hidden_layers=sizes.layers,
                        num_attention_heads=sizes.heads, num_key_value_heads=sizes.heads,
                        max_position_embeddings=sizes.rope_positions,
                        original_max_position_embeddings=sizes.rope_positions, rope_scaling=None,
                        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                        tie_word_embeddings=False)
    torch.manual_seed(0)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    start = time.perf_counter()
    torch.set_default_dtype(torch.float16 if device == 'cuda' else torch.float32)
    with torch.device(device):
        model = Phi3ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[tokenizer_vocab:] = 0     # ids the tokenizer cannot decode
    hf_dir = os.path.join(work, 'hf')
    model.save_pretrained(hf_dir)
    del model
    if sizes.longrope:
        with_longrope(os.path.join(hf_dir, 'config.json'))
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(tokenizer_dir, name), hf_dir)
    print(f'decoder: random init + save {time.perf_counter() - start:.0f} s', flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'onnxruntime_genai.models.builder', '-i', hf_dir,
                    '-o', out, '-p', precision, '-e', execution_provider,
                    '-c', os.path.join(work, 'cache'), '--extra_options', 'exclude_embeds=true'],
                   check=True)
    print(f'decoder: onnxruntime-genai builder {time.perf_counter() - start:.0f} s', flush=True)
    with open(os.path.join(out, 'genai_config.json')) as f:
        return json.load(f)


def phi3v_config(decoder_config: dict, sizes: Sizes) -> dict:
    """Turn the builder's text-model config into a phi3v one (vision, embedding sections added)."""
    model = decoder_config['model']
    session_options = model['decoder'].get('session_options', {})
    # Only the decoder's providers are set by og.Config.append_provider: vision and embedding carry
    # their own, as in the published models.
    side_options = {key: value for key, value in session_options.items()
                    if key != 'provider_options'}
    side_options['provider_options'] = [
        {name: {k: v for k, v in options.items() if k != 'enable_cuda_graph'}}
        for entry in session_options.get('provider_options', [])
        for name, options in entry.items()]
    model.update({
        'type': 'phi3v', 'bos_token_id': BOS, 'eos_token_id': EOS, 'pad_token_id': PAD,
        'context_length': sizes.context, 'vocab_size': sizes.vocab,
        'embedding': {'filename': 'embedding.onnx', 'session_options': side_options,
                      'inputs': {'input_ids': 'input_ids', 'image_features': 'image_features'},
                      'outputs': {'inputs_embeds': 'inputs_embeds'}},
        'vision': {'filename': 'vision.onnx', 'session_options': side_options,
                   'inputs': {'pixel_values': 'pixel_values', 'image_sizes': 'image_sizes'},
                   'outputs': {'image_features': 'image_features'}},
    })
    decoder_config['search']['max_length'] = sizes.context   # og's default when a caller sets none
    return decoder_config


def build(out: str, small: bool, precision: str, execution_provider: str,
          sizes: Sizes = None) -> str:
    sizes = sizes or (SMALL if small else Sizes())
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        tiny = make_tiny_model(os.path.join(work, 'tiny'), context_length=min(sizes.context, 8192))
        with open(os.path.join(tiny, 'genai_config.json')) as f:
            tiny_config = json.load(f)
        start = time.perf_counter()
        with open(os.path.join(out, 'vision.onnx'), 'wb') as f:
            f.write(build_vision(sizes).SerializeToString())
        dims = Dims(vocab_size=sizes.vocab, hidden_size=sizes.hidden)
        with open(os.path.join(out, 'embedding.onnx'), 'wb') as f:
            f.write(build_embedding(dims, build_embedding_table(sizes)).SerializeToString())
        print(f'vision + embedding: {time.perf_counter() - start:.0f} s', flush=True)
        if small:
            # the tiny decoder stands in: the folder checks the vision/embedding contract on CPU
            shutil.copy(os.path.join(tiny, 'text.onnx'), out)
            config = tiny_config
        else:
            tokenizer = json.load(open(os.path.join(tiny, 'tokenizer.json')))
            tokenizer_vocab = len(tokenizer['model']['vocab']) + 32
            config = phi3v_config(build_decoder(sizes, tiny, tokenizer_vocab, work, out, precision,
                                                execution_provider), sizes)
        # After the builder, which writes tokenizer files of its own: keep the tested set.
        for name in TOKENIZER_FILES + ('processor_config.json',):
            shutil.copy(os.path.join(tiny, name), out)
    with open(os.path.join(out, 'genai_config.json'), 'w') as f:
        json.dump(config, f, indent=4)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True)
    parser.add_argument('--small', action='store_true',
                        help='small float32 dims on CPU (checks the layout)')
    parser.add_argument('--precision', default='int4')
    parser.add_argument('--execution-provider', default='cuda')
    parser.add_argument('--longrope', action='store_true',
                        help="the published model's rope scaling (LongRoPE: the decoder gets "
                             'the If that CUDA graphs cannot capture)')
    args = parser.parse_args(argv)
    sizes = dataclasses.replace(SMALL if args.small else Sizes(), longrope=args.longrope)
    print(build(args.out, args.small, args.precision, args.execution_provider, sizes))
    return 0


if __name__ == '__main__':
    sys.exit(main())
