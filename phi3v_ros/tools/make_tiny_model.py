"""
Write a tiny random-weight Phi-3-vision model that onnxruntime-genai runs like the real one.

The folder has the layout of the published Phi-3-vision ONNX models (the re-exported folders that
onnxruntime-genai >= 0.5 reads): ``vision.onnx``, ``embedding.onnx``, ``text.onnx``,
``genai_config.json`` (model type ``phi3v``), ``processor_config.json`` (DecodeImage(BGR) ->
ConvertRGB -> Phi3ImageTransform), a small Llama-style BPE ``tokenizer.json`` (byte fallback,
Phi-3 chat tokens), ``tokenizer_config.json`` and ``special_tokens_map.json``.

``layout='may2024'`` (``--layout may2024``) writes the layout of the May-2024 exports instead, the
only one onnxruntime-genai 0.4 reads (and 0.5+ refuse): the vision graph's output is
``visual_features`` [1, rows, hidden] and the embedding graph takes ``input_ids`` only (0.4
copies the image rows over the image tokens' embeddings itself). Same files, same weights, same
answers. ``layout_for_genai(version)`` names the layout a release reads.

The weights are random, but the model is built so that tests of the real pipeline are meaningful:

* greedy output consists of whole English words from the built-in corpus (the lm_head bias allows
  only those and a little punctuation), so decoded text is readable;
* the vision encoder averages every crop's 28x28 patches and passes them through a sharp sine,
  so even slightly different images give different tokens;
* dimensions: 2 layers, hidden 64, 4 query heads and 2 KV heads of size 16 (GroupQueryAttention),
  MLP 128, vocabulary 1024 (tokenizer 1015), context length 4096; about 0.85 MB in total;
* in normal mode the model never emits its end token (generation stops at max_length); with
  ``end_immediately=True`` the first token is always ``<|end|>``;
* the same seed gives byte-identical files (with the same onnx/tokenizers versions).

Usage: ``make_tiny_model OUT_DIR [--seed N] [--end-immediately] [--layout nov2024|may2024|auto]``
(or ``python -m phi3v_ros.tools.make_tiny_model``; auto: the layout of the installed
onnxruntime-genai). Needs numpy, onnx and tokenizers only.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from phi3v_ros.tools.tiny_model_graphs import build_embedding, build_text, build_vision, Dims

SPIECE = '\u2581'  # the sentencepiece word-start marker
# plain BPE vocabulary; the Phi-3 chat tokens follow (cf. 32000 in the real model)
BASE_VOCAB = 1000
MODEL_VOCAB = 1024  # logits width, padded to a multiple of 64 like the real 32064
# vocabulary='phi3': Phi-3's sizes (32,000 plain tokens, logits 32,064), for measuring what grows
# with the vocabulary (the grammar engine's per-token work); trained on more text (CORPUS and the
# Python standard library's sources), so its tokens depend on the Python that trains it.
VOCABULARIES = {'tiny': (BASE_VOCAB, MODEL_VOCAB), 'phi3': (32000, 32064)}
CONTEXT_LENGTH = 4096
# Attention output scale: small enough that the current token steers the next one (varied text),
# large enough that the ~2,000 image rows change the generated words.
O_PROJ_SCALE = 0.75
# Vision features are sin(VISION_SENSITIVITY * projection): small colour changes -> new features.
VISION_SENSITIVITY = 8.0
# Each token's lm_head column minus ANTI_REPEAT * its own embedding: fewer "room room room" loops.
ANTI_REPEAT = 0.3

# Added tokens after the plain vocabulary, in Phi-3's order: <|endoftext|> is BASE_VOCAB + 0 (pad),
# <|end|> is BASE_VOCAB + 7 (the eos, like 32007), <|user|> is BASE_VOCAB + 10 (like 32010).
CHAT_TOKENS = (
    '<|endoftext|>', '<|assistant|>', '<|placeholder1|>', '<|placeholder2|>', '<|placeholder3|>',
    '<|placeholder4|>', '<|system|>', '<|end|>', '<|placeholder5|>', '<|placeholder6|>',
    '<|user|>',
)
IMAGE_TOKENS = tuple(f'<|image_{i}|>' for i in range(1, 5))

BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = '<s>', '</s>', '<unk>'
END_TOKEN, PAD_TOKEN = '<|end|>', '<|endoftext|>'

FILES = ('vision.onnx', 'embedding.onnx', 'text.onnx', 'genai_config.json',
         'processor_config.json', 'tokenizer.json', 'tokenizer_config.json',
         'special_tokens_map.json')

# nov2024: the re-exported folders (onnxruntime-genai 0.5 and later); may2024: the first exports
# (0.4; 0.3 too, by its changelog, but its wheel is not tested here)
LAYOUTS = ('nov2024', 'may2024')

# A small English corpus (written for this tool) from which the BPE and the output words come.
CORPUS = """\
The robot rolls slowly across the kitchen floor and stops next to the table.
A small camera on its head looks at the red cup, the blue plate and a green apple.
In the picture there is a wooden chair, a white door and a tall window with light coming in.
The dog sleeps on a soft brown carpet while a cat watches from the top of the shelf.
Outside the house a narrow street runs past a row of shops, parked cars and old trees.
People walk along the road with bags, and a child holds a yellow balloon in one hand.
This image shows a busy market where people sell fresh fruit, bread, fish and flowers.
On the left side of the room stands a large desk with a lamp, a laptop and some papers.
The right side has a bookcase full of books, a clock on the wall and a plant in a pot.
What is this? It is a photo of a mountain lake with clear water and snow on the high peaks.
The sky is bright and blue, with a few white clouds moving over the green hills.
A person in a black jacket is standing near the bus stop and looking at a phone.
There are two bottles of water, a box of tools and a pair of gloves on the bench.
The warehouse is full of shelves, boxes and pallets, and a forklift moves between them.
The robot arm picks up a metal part from the belt and places it into a plastic tray.
A sign above the gate says that visitors must wear a helmet and safety shoes.
The garden has a stone path, a small pond with fish and a bench under a big tree.
At night the city lights shine on the river and the bridge looks gold and orange.
The office is quiet; a man is reading a report and a woman is writing on the board.
The lab has a long white table with glasses, wires, sensors and a small screen.
The drone flies over a field of wheat and takes pictures of the farm and the barn.
Near the door there is a red fire extinguisher, a first aid kit and an exit sign.
The kitchen counter holds a coffee machine, a bowl of fruit, a knife and a cutting board.
A bicycle leans against the fence, and a ball lies on the grass next to a toy truck.
The hallway is long and narrow with gray walls, bright lamps and several closed doors.
The living room has a sofa, a television, a round table and a window with curtains.
A truck is parked at the loading dock while workers carry heavy boxes inside.
The beach is wide and sandy, the sea is calm and a boat sails far from the shore.
In the corner there is a small robot with wheels, a camera and two short arms.
The scene looks safe and clean; nothing seems broken and no person is in danger.
The label on the box shows a number, a date and the name of the company.
The traffic light is green, so the cars and the bus move forward through the crossing.
Snow covers the roofs of the houses, and smoke rises from a chimney into the cold air.
The table in the meeting room is covered with cups, notebooks, pens and a projector.
A cup of tea sits on a saucer beside a plate with a slice of cake and a spoon.
The robot should move to the charging station, because its battery is almost empty.
The floor is wet near the sink, so the robot slows down and avoids the water.
Several people are waiting in line in front of the counter to buy tickets.
The photo was taken in the morning; the shadows are long and the light is warm.
A bird sits on the branch of a tree and another bird flies toward the roof.
The parking lot is almost empty except for a blue van and a silver car.
There is a map on the wall with colored pins, and a calendar hangs beside it.
The machine in the factory has a control panel with buttons, lights and a display.
A pile of leaves lies under the tree, and the path is covered with small stones.
Three apples, two bananas and an orange are arranged in a basket on the table.
The child is drawing a house, a sun and a tree with crayons on white paper.
The robot answers the question: the object in front of the camera is a coffee mug.
The window shows a view of the harbor with ships, cranes and stacks of containers.
The door is open, the room is dark and only a small lamp lights the desk.
A large screen on the wall displays a graph, a table of numbers and a picture of a robot.
"""


def layout_for_genai(version: Optional[str] = None) -> str:
    """
    Return the folder layout that onnxruntime-genai ``version`` reads (None: the installed one).

    Releases before 0.5 read the May-2024 exports only, later ones the Nov-2024 re-exports only
    (as ``fetch_model`` picks the published folders). With none given or installed: nov2024.
    """
    from phi3v_ros.engine.genai_releases import version_tuple
    from phi3v_ros.tools.fetch_model import installed_genai
    if version is None:
        installed = installed_genai()
        version = installed[1] if installed else None
    if version is not None and version_tuple(version) < (0, 5):
        return 'may2024'
    return 'nov2024'


def _corpus_lines() -> List[str]:
    return [line for line in CORPUS.splitlines() if line.strip()]


def _corpus_words() -> set:
    words = set()
    for line in _corpus_lines():
        for raw in line.split():
            word = raw.strip('.,;:?!')
            if word.isalpha():
                words.add(word)
    return words


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------

def _large_corpus_lines() -> List[str]:
    """Return the corpus and the Python standard library's sources: text for 32,000 tokens."""
    import sysconfig
    lines = _corpus_lines()
    stdlib = pathlib.Path(sysconfig.get_paths()['stdlib'])
    for path in sorted(stdlib.glob('*.py')) + sorted(stdlib.glob('*/*.py')):
        try:
            lines += path.read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError):
            continue
    return lines


def _train_bpe(base_vocab: int = BASE_VOCAB) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """
    Train a sentencepiece-style BPE on the corpus; return (vocab, merges) of base_vocab tokens.

    Ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 the byte-fallback tokens <0x00>..<0xFF>, then characters
    and merges in training order, exactly as a Llama/Phi-3 tokenizer.json lays them out.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    fixed = [UNK_TOKEN, BOS_TOKEN, EOS_TOKEN] + [f'<0x{i:02X}>' for i in range(256)]
    trainer_tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # Training splits on the word-start marker so no merge spans two words (as in sentencepiece),
    # and isolates punctuation so that no merge mixes it with letters: onnxruntime-extensions and
    # Hugging Face tokenizers then split every text the same way.
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPIECE, prepend_scheme='always', split=True),
        pre_tokenizers.Punctuation('isolated'),
    ])
    trainer = trainers.BpeTrainer(vocab_size=base_vocab - len(fixed), min_frequency=1,
                                  special_tokens=[], show_progress=False)
    trainer_tok.train_from_iterator(
        _corpus_lines() if base_vocab <= BASE_VOCAB else _large_corpus_lines(), trainer)
    model = json.loads(trainer_tok.to_str())['model']
    learned = sorted(model['vocab'].items(), key=lambda item: item[1])
    if len(learned) != base_vocab - len(fixed):
        raise RuntimeError(f'BPE training gave {len(learned)} tokens, '
                           f'expected {base_vocab - len(fixed)}')
    vocab = {tok: i for i, tok in enumerate(fixed)}
    for tok, _ in learned:
        vocab[tok] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(' ', 1)) for m in model['merges']]
    return vocab, merges


def build_tokenizer_json(string_merges: bool = False, base_vocab: int = BASE_VOCAB) -> str:
    """
    Build the tokenizer.json text: Llama-style BPE (byte fallback) and the Phi-3 chat tokens.

    ``string_merges`` writes each merge as one string "a b", as tokenizers before 0.20 did (and
    the May-2024 exports have): the onnxruntime-extensions of onnxruntime-genai 0.4 read only
    that form ("type must be string, but is array").
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab, merges = _train_bpe(base_vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK_TOKEN, byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE),
                                           normalizers.Replace(' ', SPIECE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPIECE, ' '), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(' ', 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single=f'{BOS_TOKEN}:0 $A:0', pair=f'{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1',
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])])

    def added(content: str, special: bool = True) -> AddedToken:
        return AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False,
                          special=special)

    tok.add_special_tokens([added(UNK_TOKEN), added(BOS_TOKEN), added(EOS_TOKEN)])
    tok.add_special_tokens([added(t) for t in CHAT_TOKENS + IMAGE_TOKENS])
    text = tok.to_str(pretty=True)
    if not string_merges:
        return text
    data = json.loads(text)
    data['model']['merges'] = [merge if isinstance(merge, str) else ' '.join(merge)
                               for merge in data['model']['merges']]
    return json.dumps(data, indent=2, ensure_ascii=False)


def _tokenizer_config(token_ids: Dict[str, int]) -> dict:
    decoder = {}
    for content, idx in sorted(token_ids.items(), key=lambda item: item[1]):
        decoder[str(idx)] = {'content': content, 'lstrip': False, 'normalized': False,
                             'rstrip': False, 'single_word': False, 'special': True}
    return {
        'add_bos_token': True,
        'add_eos_token': False,
        'added_tokens_decoder': decoder,
        'bos_token': BOS_TOKEN,
        'chat_template': ("{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + "
                          "message['content'] + '<|end|>\n' }}{% endfor %}"
                          "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
                          "{{- '<|assistant|>\n' -}}{% endif %}"),
        'clean_up_tokenization_spaces': False,
        'eos_token': PAD_TOKEN,
        'legacy': False,
        'model_max_length': CONTEXT_LENGTH,
        'pad_token': PAD_TOKEN,
        'padding_side': 'right',
        'sp_model_kwargs': {},
        'tokenizer_class': 'LlamaTokenizer',
        'unk_token': UNK_TOKEN,
        'use_default_system_prompt': False,
    }


def _special_tokens_map() -> dict:
    def entry(content: str) -> dict:
        return {'content': content, 'lstrip': False, 'normalized': False, 'rstrip': False,
                'single_word': False}
    return {'bos_token': entry(BOS_TOKEN), 'eos_token': entry(PAD_TOKEN),
            'pad_token': entry(PAD_TOKEN), 'unk_token': entry(UNK_TOKEN)}


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------

def _genai_config(dims: Dims, ids: Dict[str, int], layout: str = 'nov2024') -> dict:
    session_options = {'log_id': 'onnxruntime-genai', 'provider_options': []}
    if layout == 'may2024':
        # 0.4's parser knows no image_features: the vision graph gives visual_features and the
        # embedding graph sees input_ids only
        embedding_inputs = {'input_ids': 'input_ids'}
        vision_outputs = {'visual_features': 'visual_features'}
    else:
        embedding_inputs = {'input_ids': 'input_ids', 'image_features': 'image_features'}
        vision_outputs = {'image_features': 'image_features'}
    return {
        'model': {
            'bos_token_id': ids[BOS_TOKEN],
            'context_length': dims.context_length,
            'decoder': {
                'session_options': session_options,
                'filename': 'text.onnx',
                'head_size': dims.head_size,
                'hidden_size': dims.hidden_size,
                'inputs': {
                    'inputs_embeds': 'inputs_embeds',
                    'attention_mask': 'attention_mask',
                    'past_key_names': 'past_key_values.%d.key',
                    'past_value_names': 'past_key_values.%d.value',
                },
                'outputs': {
                    'logits': 'logits',
                    'present_key_names': 'present.%d.key',
                    'present_value_names': 'present.%d.value',
                },
                'num_attention_heads': dims.num_heads,
                'num_hidden_layers': dims.num_layers,
                'num_key_value_heads': dims.num_kv_heads,
            },
            'embedding': {
                'filename': 'embedding.onnx',
                'inputs': embedding_inputs,
                'outputs': {'inputs_embeds': 'inputs_embeds'},
            },
            'vision': {
                'filename': 'vision.onnx',
                'inputs': {'pixel_values': 'pixel_values', 'image_sizes': 'image_sizes'},
                'outputs': vision_outputs,
            },
            'eos_token_id': ids[END_TOKEN],
            'pad_token_id': ids[PAD_TOKEN],
            'type': 'phi3v',
            'vocab_size': dims.vocab_size,
        },
        'search': {
            'diversity_penalty': 0.0,
            'do_sample': False,
            'early_stopping': True,
            'length_penalty': 1.0,
            'max_length': dims.context_length,
            'min_length': 0,
            'no_repeat_ngram_size': 0,
            'num_beams': 1,
            'num_return_sequences': 1,
            'past_present_share_buffer': True,
            'repetition_penalty': 1.0,
            'temperature': 1.0,
            'top_k': 1,
            'top_p': 1.0,
        },
    }


def _processor_config() -> dict:
    def op(name: str, type_: str, attrs: Optional[dict] = None) -> dict:
        operation = {'name': name, 'type': type_}
        if attrs:
            operation['attrs'] = attrs
        return {'operation': operation}
    return {
        'processor': {
            'name': 'phi_3_image_processor',
            'transforms': [
                op('decode_image', 'DecodeImage', {'color_space': 'BGR'}),
                op('convert_to_rgb', 'ConvertRGB'),
                op('phi3_image_transform', 'Phi3ImageTransform',
                   {'num_crops': 16, 'num_img_tokens': 144}),
            ],
        },
    }


# ------------------------------------------------------------------------------------------------
# Output layer
# ------------------------------------------------------------------------------------------------

def _lm_bias(dims: Dims, vocab: Dict[str, int], end_id: int, end_immediately: bool) -> np.ndarray:
    """Allow whole corpus words (and some punctuation); forbid bytes, pieces and control tokens."""
    bias = np.full(dims.vocab_size, -100.0, dtype=np.float32)
    words = _corpus_words()
    for piece, idx in vocab.items():
        if piece.startswith(SPIECE) and piece[1:] in words:
            bias[idx] = 0.0
        elif piece in ('.', ','):
            bias[idx] = -0.5
    if end_immediately:
        bias[end_id] = 100.0
    return bias


def _json_text(obj: dict) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False) + '\n'


def make_tiny_model(out_dir, *, seed: int = 0, end_immediately: bool = False,
                    context_length: int = CONTEXT_LENGTH,
                    num_layers: int = Dims.num_layers, layout: str = 'nov2024',
                    vocabulary: str = 'tiny',
                    longrope_original: Optional[int] = None) -> pathlib.Path:
    """
    Write the tiny model into ``out_dir`` (created if needed) and return its absolute path.

    A longer ``context_length`` lets tests keep a generation running for seconds (cancel, floods);
    more ``num_layers`` make its KV cache larger per token (the memory guard's tests).
    ``layout`` is nov2024 (onnxruntime-genai 0.5 and later), may2024 (0.4) or auto (the layout
    of the installed release, ``layout_for_genai()``). ``vocabulary`` 'phi3' gives the tokenizer
    and the logits Phi-3's sizes (see VOCABULARIES). ``longrope_original`` gives the decoder
    Phi-3-vision-128k's LongRoPE: short-factor rotary caches up to that many positions, long-factor
    ones past it, picked by an If as onnxruntime-genai's builder writes it (graph_decoder.py).

    Same arguments -> byte-identical files. Files already in ``out_dir`` with the same names are
    overwritten; other files are left alone.
    """
    import onnx

    if layout == 'auto':
        layout = layout_for_genai()
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {", ".join(LAYOUTS)} or auto, not {layout!r}')
    may2024 = layout == 'may2024'
    out = pathlib.Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    base_vocab, model_vocab = VOCABULARIES[vocabulary]
    dims = Dims(vocab_size=model_vocab, context_length=context_length, num_layers=num_layers,
                longrope_original=longrope_original)

    tokenizer_json = build_tokenizer_json(string_merges=may2024, base_vocab=base_vocab)
    tok_data = json.loads(tokenizer_json)
    vocab: Dict[str, int] = dict(tok_data['model']['vocab'])
    added = {entry['content']: entry['id'] for entry in tok_data['added_tokens']}
    vocab.update(added)
    if max(vocab.values()) >= dims.vocab_size:
        raise RuntimeError('tokenizer is larger than the model vocabulary')

    rng = np.random.default_rng(seed)
    hidden = dims.hidden_size
    table = rng.standard_normal((dims.vocab_size, hidden)).astype(np.float32)
    lm_head = rng.standard_normal((hidden, dims.vocab_size)) * 1.5 - ANTI_REPEAT * table.T
    lm_head = lm_head.astype(np.float32)
    bias = _lm_bias(dims, vocab, added[END_TOKEN], end_immediately)

    graphs = {
        'vision.onnx': build_vision(dims, rng, sensitivity=VISION_SENSITIVITY,
                                    output='visual_features' if may2024 else 'image_features',
                                    batched=may2024),
        'embedding.onnx': build_embedding(dims, table, image_features=not may2024),
        'text.onnx': build_text(dims, rng, lm_head, bias, o_proj_scale=O_PROJ_SCALE),
    }
    for name, model in graphs.items():
        onnx.checker.check_model(model)
        (out / name).write_bytes(model.SerializeToString(deterministic=True))

    texts = {
        'genai_config.json': _json_text(_genai_config(dims, added, layout)),
        'processor_config.json': _json_text(_processor_config()),
        'tokenizer.json': tokenizer_json + '\n',
        'tokenizer_config.json': _json_text(_tokenizer_config(added)),
        'special_tokens_map.json': _json_text(_special_tokens_map()),
    }
    for name, text in texts.items():
        (out / name).write_bytes(text.encode('utf-8'))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='make_tiny_model',
        description='Write a tiny random-weight Phi-3-vision ONNX model '
                    '(onnxruntime-genai phi3v layout).')
    parser.add_argument('out_dir', help='folder to write (created if missing)')
    parser.add_argument('--seed', type=int, default=0, help='weight seed (default 0)')
    parser.add_argument('--end-immediately', action='store_true',
                        help='make the model emit <|end|> as its first token')
    parser.add_argument('--context-length', type=int, default=CONTEXT_LENGTH,
                        help=f'longest prompt + answer in tokens (default {CONTEXT_LENGTH})')
    parser.add_argument('--num-layers', type=int, default=Dims.num_layers,
                        help=f'decoder layers (default {Dims.num_layers})')
    parser.add_argument('--vocabulary', choices=sorted(VOCABULARIES), default='tiny',
                        help="tiny (1,000 tokens, the default) or phi3 (Phi-3's 32,064)")
    parser.add_argument('--layout', choices=LAYOUTS + ('auto',), default='nov2024',
                        help='folder layout: nov2024 (onnxruntime-genai 0.5 and later, the '
                             'default), may2024 (0.4) or auto (that of the installed release)')
    parser.add_argument('--longrope-original', type=int, metavar='POSITIONS',
                        help='LongRoPE: short-factor rotary caches up to POSITIONS, long-factor '
                             'ones past it, picked by an If (as Phi-3-vision-128k, 4096)')
    args = parser.parse_args(argv)
    path = make_tiny_model(args.out_dir, seed=args.seed, end_immediately=args.end_immediately,
                           context_length=args.context_length, num_layers=args.num_layers,
                           layout=args.layout, vocabulary=args.vocabulary,
                           longrope_original=args.longrope_original)
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
