"""
ONNX graphs of the tiny random-weight Phi-3-vision model written by ``make_tiny_model``.

Three graphs in the layout onnxruntime-genai's ``phi3v`` pipeline reads:

* vision:    pixel_values [images, crops, 3, 336, 336], image_sizes [images, 2]
             -> image_features [sum(num_image_tokens), hidden]
* embedding: input_ids [batch, seq] (negative ids mark image tokens), image_features [rows, hidden]
             -> inputs_embeds [batch, seq, hidden]
* text:      inputs_embeds, attention_mask, past_key_values.%d.key/value
             -> logits [batch, seq, vocab], present.%d.key/value
             (com.microsoft.GroupQueryAttention)

The May-2024 exports (read by onnxruntime-genai 0.4 only) differ in two graphs: the vision output
is ``visual_features`` [1, rows, hidden] and the embedding takes ``input_ids`` only
(``build_vision(output=..., batched=True)``, ``build_embedding(image_features=False)``).

Only numpy and onnx are needed. Weights come from the caller's ``numpy.random.Generator`` so the
same seed gives byte-identical files. The graphs use opset 17 and IR version 8 so that older
onnxruntime releases (e.g. on a Jetson) load them too.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

OPSET = 17
MS_OPSET = 1
IR_VERSION = 8

CROP_SIZE = 336          # Phi3ImageTransform crop side
TOKENS_PER_CROP = 144    # 12 x 12 patch tokens per crop
NEWLINE_TOKENS = 12      # one "newline" token per row of 12 patches
POOL_GRID = 4            # each crop is averaged down to 3 x 4 x 4 numbers


@dataclasses.dataclass(frozen=True)
class Dims:
    """Dimensions of the tiny decoder (mirrors the genai_config decoder section)."""

    vocab_size: int = 1024
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    context_length: int = 4096
    rope_theta: float = 10000.0
    # LongRoPE as in Phi-3-vision-128k: up to this many positions the short-factor caches, past
    # it the long-factor ones, picked by an If as onnxruntime-genai's builder lays it out. None:
    # one plain cache, no control flow.
    longrope_original: Optional[int] = None

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads


class _Graph:
    """Small helper that collects nodes and initializers with unique names."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f'{hint}_{self._count}'

    def const(self, value, name: str | None = None, dtype=None) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = name or self._fresh('c')
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], *, outputs: Sequence[str] | int = 1,
           domain: str = '', **attrs) -> str | List[str]:
        if isinstance(outputs, int):
            out_names = [self._fresh(op_type.lower()) for _ in range(outputs)]
        else:
            out_names = list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), out_names,
                                           name=self._fresh(op_type), domain=domain, **attrs))
        return out_names[0] if len(out_names) == 1 else out_names

    def model(self, inputs, outputs, *, use_ms_domain: bool = False) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.inits)
        opsets = [helper.make_opsetid('', OPSET)]
        if use_ms_domain:
            opsets.append(helper.make_opsetid('com.microsoft', MS_OPSET))
        model = helper.make_model(graph, opset_imports=opsets,
                                  producer_name='phi3v_ros.make_tiny_model', producer_version='1')
        model.ir_version = IR_VERSION
        return model


def _randn(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def phi3v_row_sources(g: _Graph) -> Tuple[str, str]:
    """
    Map every image_features row to the crop it comes from and its patch (indices into all crops).

    Image i (padded size H x W, h = H/336, w = W/336) gets (h*w + 1) * 144 + 1 + (h + 1) * 12 rows,
    the count the Phi3ImageTransform reports in num_image_tokens. Row r of an image belongs to crop
    min(r // 144, h*w) (crop 0 is the global view) and patch r % 144 of that crop's 12 x 12 grid.
    Reads the graph inputs 'pixel_values' [images, crops, 3, 336, 336] and
    'image_sizes' [images, 2].
    """
    i64 = np.int64
    c0, c1 = g.const(np.array(0, i64)), g.const(np.array(1, i64))
    c_crop = g.const(np.array(CROP_SIZE, i64))
    c_tokens = g.const(np.array(TOKENS_PER_CROP, i64))
    # rows per image from image_sizes [images, 2] (padded height, width)
    hw = g.op('Div', ['image_sizes', c_crop])                                  # [N, 2]
    h = g.op('Squeeze',
             [g.op('Slice', [hw, g.const(np.array([0], i64)), g.const(np.array([1], i64)),
                             g.const(np.array([1], i64))]),
              g.const(np.array([1], i64))])
    w = g.op('Squeeze',
             [g.op('Slice', [hw, g.const(np.array([1], i64)), g.const(np.array([2], i64)),
                             g.const(np.array([1], i64))]),
              g.const(np.array([1], i64))])
    crops = g.op('Mul', [h, w])                                                # [N]
    t_crops = g.op('Mul', [g.op('Add', [crops, c1]), c_tokens])
    t_lines = g.op('Mul', [g.op('Add', [h, c1]), g.const(np.array(NEWLINE_TOKENS, i64))])
    tokens = g.op('Add', [g.op('Add', [t_crops, c1]), t_lines])                # [N]
    ends = g.op('CumSum', [tokens, c0])                                        # [N]
    starts = g.op('Sub', [ends, tokens])
    total = g.op('ReduceSum', [tokens], keepdims=0)                            # scalar
    rows = g.op('Range', [c0, total, c1])                                      # [T]
    rows_col = g.op('Unsqueeze', [rows, g.const(np.array([1], i64))])          # [T, 1]
    ends_row = g.op('Unsqueeze', [ends, g.const(np.array([0], i64))])          # [1, N]
    done = g.op('Cast', [g.op('GreaterOrEqual', [rows_col, ends_row])], to=TensorProto.INT64)
    # [T] image of each row
    image = g.op('ReduceSum', [done, g.const(np.array([1], i64))], keepdims=0)
    # [T] row within image
    offset = g.op('Sub', [rows, g.op('Gather', [starts, image], axis=0)])
    crop = g.op('Min', [g.op('Div', [offset, c_tokens]), g.op('Gather', [crops, image], axis=0)])
    num_crops = g.op('Gather', [g.op('Shape', ['pixel_values']), c1], axis=0)  # crops per image
    crop = g.op('Min', [crop, g.op('Sub', [num_crops, c1])])
    crop_index = g.op('Add', [g.op('Mul', [image, num_crops]), crop])          # [T] into M
    patch_index = g.op('Add',
                       [g.op('Mul', [crop_index, c_tokens]), g.op('Mod', [offset, c_tokens])])
    return crop_index, patch_index


def build_vision(dims: Dims, rng: np.random.Generator, *, sensitivity: float = 8.0,
                 amplitude: float = 2.0, output: str = 'image_features',
                 batched: bool = False) -> onnx.ModelProto:
    """
    Vision encoder: average pooling, a random projection and a sine, laid out in Phi-3's rows.

    Image i (padded size H x W, h = H/336, w = W/336) gets (h*w + 1) * 144 + 1 + (h + 1) * 12 rows,
    the count the Phi3ImageTransform reports in num_image_tokens. Row r of an image belongs to crop
    min(r // 144, h*w) (crop 0 is the global view) and patch r % 144 of that crop's 12 x 12 grid of
    28 x 28 pixel patches. Its features are amplitude * sin(sensitivity * (A @ crop summary
    (3 x 4 x 4 means) + B @ patch means (3) + bias)): the sine with a high ``sensitivity`` makes
    even small changes of the pictures' colours give clearly different rows, hence different
    generated words.

    ``output`` names the output; ``batched`` gives it a leading batch axis of 1
    ([1, rows, hidden]), as the May-2024 exports' ``visual_features`` (onnxruntime-genai 0.4
    allocates that shape and copies the rows over the image tokens' embeddings itself).
    """
    g = _Graph('tiny_phi3v_vision')
    hidden = dims.hidden_size
    grid = int(np.sqrt(TOKENS_PER_CROP))                                       # 12 patches a side
    summary = 3 * POOL_GRID * POOL_GRID
    w_crop = g.const(_randn(rng, (summary, hidden), 1.0 / np.sqrt(summary)),
                     'vision.crop_proj.weight')
    w_patch = g.const(_randn(rng, (3, hidden), 0.5 / np.sqrt(3)), 'vision.patch_proj.weight')
    b_proj = g.const(_randn(rng, (hidden,), 1.0), 'vision.proj.bias')

    i64 = np.int64

    # per crop: patch means [crops_total * 144, 3] and a 3 x 4 x 4 summary [crops_total, 48]
    flat = g.op('Reshape', ['pixel_values', g.const(np.array([-1, 3, CROP_SIZE, CROP_SIZE], i64))])
    k = CROP_SIZE // grid
    patches = g.op('AveragePool', [flat], kernel_shape=[k, k], strides=[k, k])    # [M, 3, 12, 12]
    k2 = grid // POOL_GRID
    # [M, 3, 4, 4]
    crop_sum = g.op('AveragePool', [patches], kernel_shape=[k2, k2], strides=[k2, k2])
    crop_sum = g.op('Reshape', [crop_sum, g.const(np.array([-1, summary], i64))])
    crop_feat = g.op('MatMul', [crop_sum, w_crop])                                  # [M, hidden]
    patches = g.op('Transpose', [g.op('Reshape', [patches, g.const(np.array([0, 3, -1], i64))])],
                   perm=[0, 2, 1])                                                  # [M, 144, 3]
    patches = g.op('Reshape', [patches, g.const(np.array([-1, 3], i64))])
    # [M * 144, hidden]
    patch_feat = g.op('MatMul', [patches, w_patch])

    crop_index, patch_index = phi3v_row_sources(g)
    gathered = g.op('Add', [g.op('Gather', [crop_feat, crop_index], axis=0),
                            g.op('Gather', [patch_feat, patch_index], axis=0)])
    pre = g.op('Add', [gathered, b_proj])
    pre = g.op('Mul', [pre, g.const(np.array(sensitivity, np.float32))])
    features = g.op('Mul', [g.op('Sin', [pre]), g.const(np.array(amplitude, np.float32))],
                    outputs=[output + '_rows' if batched else output])
    if batched:
        g.op('Unsqueeze', [features, g.const(np.array([0], i64))], outputs=[output])

    inputs = [
        helper.make_tensor_value_info('pixel_values', TensorProto.FLOAT,
                                      ['num_images', 'max_num_crops', 3, CROP_SIZE, CROP_SIZE]),
        helper.make_tensor_value_info('image_sizes', TensorProto.INT64, ['num_images', 2]),
    ]
    shape = ['num_image_tokens', hidden]
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT,
                                             [1] + shape if batched else shape)]
    return g.model(inputs, outputs)


def build_embedding(dims: Dims, table: np.ndarray, *,
                    image_features: bool = True) -> onnx.ModelProto:
    """
    Token embedding; positions with negative ids take the next row of image_features in order.

    The table's dtype (float32 or float16) is the dtype of image_features and inputs_embeds.
    With ``image_features=False`` (the May-2024 exports) the graph takes input_ids only and
    embeds negative ids as id 0: onnxruntime-genai 0.4 overwrites those rows with the vision
    graph's output itself.
    """
    g = _Graph('tiny_phi3v_embedding')
    hidden = dims.hidden_size
    elem_type = helper.np_dtype_to_tensor_dtype(table.dtype)
    i64 = np.int64
    emb = g.const(table, 'embed_tokens.weight')
    c0 = g.const(np.array(0, i64))

    flat = g.op('Reshape', ['input_ids', g.const(np.array([-1], i64))])         # [B*S]
    shape = g.op('Concat', [g.op('Shape', ['input_ids']), g.const(np.array([hidden], i64))],
                 axis=0)
    text = g.op('Gather', [emb, g.op('Max', [flat, c0])], axis=0)              # [B*S, hidden]
    inputs = [helper.make_tensor_value_info('input_ids', TensorProto.INT64,
                                            ['batch_size', 'sequence_length'])]
    outputs = [helper.make_tensor_value_info('inputs_embeds', elem_type,
                                             ['batch_size', 'sequence_length', hidden])]
    if not image_features:
        g.op('Reshape', [text, shape], outputs=['inputs_embeds'])
        return g.model(inputs, outputs)
    is_img = g.op('Less', [flat, c0])
    img_i = g.op('Cast', [is_img], to=TensorProto.INT64)
    # 0 for a text token, k for the k-th image token (row k of the zero-row-padded features)
    index = g.op('Mul', [g.op('CumSum', [img_i, c0]), img_i])
    padded = g.op('Concat', [g.const(np.zeros((1, hidden), table.dtype)), 'image_features'],
                  axis=0)
    img = g.op('Gather', [padded, index], axis=0)
    mixed = g.op('Where', [g.op('Unsqueeze', [is_img, g.const(np.array([1], i64))]), img, text])
    g.op('Reshape', [mixed, shape], outputs=['inputs_embeds'])
    inputs.append(helper.make_tensor_value_info('image_features', elem_type,
                                                ['num_image_tokens', hidden]))
    return g.model(inputs, outputs)


def longrope_factors(count: int) -> Tuple[np.ndarray, np.ndarray]:
    """Short and long rescale factors of LongRoPE's shape (rising from 1), count of each."""
    rising = np.linspace(0.0, 1.0, count)
    return 1.0 + 2.0 * rising, 1.0 + 63.0 * rising ** 2


def _longrope_caches(g: _Graph, dims: Dims, mask_len: str) -> Tuple[str, str]:
    """
    Cos/sin caches picked by an If, as onnxruntime-genai's builder writes a LongRoPE decoder.

    Greater(attention_mask's length, original) -> If: then the long-factor caches of
    context_length rows, else the short-factor ones of `original` rows, each branch two Constant
    nodes (make_rotary_embedding_multi_cache in the builder); both scaled by LongRoPE's
    sqrt(1 + ln(context / original) / ln(original)).
    """
    hd, original = dims.head_size, dims.longrope_original
    short, long = longrope_factors(hd // 2)
    scale = np.sqrt(1 + np.log(dims.context_length / original) / np.log(original))
    exponents = np.arange(0, hd, 2, dtype=np.float64) / hd

    def caches(factors: np.ndarray, rows: int, name: str) -> onnx.GraphProto:
        angles = np.outer(np.arange(rows), 1.0 / (factors * dims.rope_theta ** exponents))
        nodes = [helper.make_node('Constant', [], [f'{kind}_cache_{name}'],
                                  value=numpy_helper.from_array(
                                      (function(angles) * scale).astype(np.float32),
                                      f'{kind}_cache_{name}_value'))
                 for kind, function in (('cos', np.cos), ('sin', np.sin))]
        return helper.make_graph(nodes, f'{name}_rope_caches_graph', [], [
            helper.make_tensor_value_info(f'{kind}_cache_{name}', TensorProto.FLOAT, None)
            for kind in ('cos', 'sin')])

    longer = g.op('Greater', [mask_len, g.const(np.array(original, np.int64))])
    return tuple(g.op('If', [longer], outputs=['cos_cache', 'sin_cache'],
                      then_branch=caches(long, dims.context_length, 'large'),
                      else_branch=caches(short, original, 'small')))


def build_text(dims: Dims, rng: np.random.Generator, lm_head: np.ndarray,
               lm_bias: np.ndarray, *, o_proj_scale: float = 0.75) -> onnx.ModelProto:
    """Pre-norm decoder with GroupQueryAttention (rotary inside the op) and a biased lm_head."""
    g = _Graph('tiny_phi3v_text')
    hd, hidden, inter = dims.head_size, dims.hidden_size, dims.intermediate_size
    q_size, kv_size = dims.num_heads * hd, dims.num_kv_heads * hd
    i64 = np.int64

    # GroupQueryAttention bookkeeping, as the onnxruntime-genai model builder does it
    mask_sum = g.op('ReduceSum', ['attention_mask', g.const(np.array([1], i64))], keepdims=0)
    seqlens_k = g.op('Cast', [g.op('Sub', [mask_sum, g.const(np.array(1, i64))])],
                     to=TensorProto.INT32)
    mask_len = g.op('Gather', [g.op('Shape', ['attention_mask']), g.const(np.array(1, i64))],
                    axis=0)
    total_len = g.op('Cast', [mask_len], to=TensorProto.INT32)

    if dims.longrope_original is None:
        # rotary caches, computed in the graph (constant-folded at load) to keep the file small
        inv_freq = 1.0 / (dims.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        inv_freq = inv_freq.astype(np.float32)
        positions = g.op('Range', [g.const(np.array(0, i64)),
                                   g.const(np.array(dims.context_length, i64)),
                                   g.const(np.array(1, i64))])
        positions = g.op('Cast', [positions], to=TensorProto.FLOAT)
        angles = g.op('Mul', [g.op('Unsqueeze', [positions, g.const(np.array([1], i64))]),
                              g.const(inv_freq.reshape(1, -1), 'rotary.inv_freq')])
        cos_cache, sin_cache = g.op('Cos', [angles]), g.op('Sin', [angles])
    else:
        cos_cache, sin_cache = _longrope_caches(g, dims, mask_len)

    def norm(x: str, prefix: str) -> str:
        gamma = g.const(np.ones(hidden, np.float32) + _randn(rng, (hidden,), 0.05),
                        f'{prefix}.weight')
        beta = g.const(np.zeros(hidden, np.float32), f'{prefix}.bias')
        return g.op('LayerNormalization', [x, gamma, beta], axis=-1, epsilon=1e-5)

    x = 'inputs_embeds'
    for layer in range(dims.num_layers):
        p = f'layers.{layer}'
        h = norm(x, f'{p}.input_layernorm')
        w_qkv = g.const(_randn(rng, (hidden, q_size + 2 * kv_size), 1.0 / np.sqrt(hidden)),
                        f'{p}.attn.qkv_proj.weight')
        split = g.const(np.array([q_size, kv_size, kv_size], i64))
        q, k, v = g.op('Split', [g.op('MatMul', [h, w_qkv]), split], outputs=3, axis=-1)
        attn, _, _ = g.op(
            'GroupQueryAttention',
            [q, k, v, f'past_key_values.{layer}.key', f'past_key_values.{layer}.value',
             seqlens_k, total_len, cos_cache, sin_cache],
            outputs=[f'{p}.attn.out', f'present.{layer}.key', f'present.{layer}.value'],
            domain='com.microsoft', num_heads=dims.num_heads, kv_num_heads=dims.num_kv_heads,
            do_rotary=1, rotary_interleaved=0, scale=float(1.0 / np.sqrt(hd)))
        w_o = g.const(_randn(rng, (q_size, hidden), o_proj_scale / np.sqrt(q_size)),
                      f'{p}.attn.o_proj.weight')
        x = g.op('Add', [x, g.op('MatMul', [attn, w_o])])
        h = norm(x, f'{p}.post_attention_layernorm')
        w_up = g.const(_randn(rng, (hidden, inter), 1.0 / np.sqrt(hidden)),
                       f'{p}.mlp.up_proj.weight')
        w_down = g.const(_randn(rng, (inter, hidden), 1.0 / np.sqrt(inter)),
                         f'{p}.mlp.down_proj.weight')
        up = g.op('MatMul', [h, w_up])
        act = g.op('Mul', [up, g.op('Sigmoid', [up])])
        x = g.op('Add', [x, g.op('MatMul', [act, w_down])])

    h = norm(x, 'norm')
    logits = g.op('MatMul', [h, g.const(lm_head.astype(np.float32), 'lm_head.weight')])
    g.op('Add', [logits, g.const(lm_bias.astype(np.float32), 'lm_head.bias')], outputs=['logits'])

    kv_shape = ['batch_size', dims.num_kv_heads, 'past_sequence_length', hd]
    present_shape = ['batch_size', dims.num_kv_heads, 'total_sequence_length', hd]
    inputs = [
        helper.make_tensor_value_info('inputs_embeds', TensorProto.FLOAT,
                                      ['batch_size', 'sequence_length', hidden]),
        helper.make_tensor_value_info('attention_mask', TensorProto.INT64,
                                      ['batch_size', 'total_sequence_length']),
    ]
    outputs = [helper.make_tensor_value_info('logits', TensorProto.FLOAT,
                                             ['batch_size', 'sequence_length', dims.vocab_size])]
    for layer in range(dims.num_layers):
        for kind in ('key', 'value'):
            inputs.append(helper.make_tensor_value_info(f'past_key_values.{layer}.{kind}',
                                                        TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f'present.{layer}.{kind}',
                                                         TensorProto.FLOAT, present_shape))
    return g.model(inputs, outputs, use_ms_domain=True)
