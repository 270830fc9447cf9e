"""
Answers constrained to a format: onnxruntime-genai's guidance (llguidance), and choices by rank.

A format reaches the engine as (kind, spec): choices, regex, json_schema or lark_grammar. With
guidance (GeneratorParams.set_guidance, onnxruntime-genai 0.8 and later when built with it) each
becomes the grammar llguidance takes: choices a Lark grammar of string literals, a JSON schema
compact (no free whitespace, so that the model cannot pad the object forever and stops once it is
complete: "x-guidance": {"whitespace_flexible": false}), regex and Lark as given.

Without guidance, choices are still answered: by the model's own scores of the first token of
the answer (ChoiceScores), when the choices start with different characters; other formats need
guidance. With or without it, ChoiceScores gives each choice's probability at that first token:
the softmax mass of every token that starts that choice (the text of each token read from the
model's tokenizer.json, as the grammar engine reads it), renormalised over the choices. The
greedy choice under guidance is the one whose starting token scores highest, which is also what
ranking answers, so the two agree.
"""
from __future__ import annotations

import json
from typing import Dict, Optional, Sequence, Tuple

import numpy as np


def has_guidance(og) -> bool:
    """Return True when this onnxruntime-genai has the guidance API (0.8 and later)."""
    return hasattr(og.GeneratorParams, 'set_guidance')


def grammar_for(kind: str, spec) -> Tuple[str, str]:
    """Return (guidance type, data) for set_guidance from a format's kind and spec."""
    if kind == 'choices':
        # JSON's string escapes are Lark's: any choice is one literal
        return 'lark_grammar', 'start: ' + ' | '.join(json.dumps(choice) for choice in spec)
    if kind == 'json_schema':
        schema = dict(spec) if isinstance(spec, dict) else spec
        if isinstance(schema, dict):
            schema.setdefault('x-guidance', {'whitespace_flexible': False})
        return 'json_schema', json.dumps(schema, separators=(',', ':'))
    if kind in ('regex', 'lark_grammar'):
        return kind, spec
    raise ValueError(f'unknown format {kind!r}')


def logits_of_last_step(generator) -> Optional[np.ndarray]:
    """Return the logits the next token is chosen from, or None where the release cannot say."""
    if hasattr(generator, 'get_logits'):
        logits = generator.get_logits()
    elif hasattr(generator, 'get_output'):
        logits = generator.get_output('logits')
    else:
        return None
    logits = np.asarray(logits, dtype=np.float32)
    if logits.size == 0:        # 0.4's phi3v keeps them to itself
        return None
    return logits.reshape(-1, logits.shape[-1])[-1]


def token_texts(tokenizer_json: str) -> Dict[int, bytes]:
    """
    Return {token id: its bytes} of a Hugging Face tokenizer.json (BPE or Unigram).

    As the grammar engine reads them: SentencePiece's word marker is a space, a byte-fallback
    token (<0x67>) is its byte; added (special) tokens have no text and are left out.
    """
    with open(tokenizer_json, encoding='utf-8') as f:
        data = json.load(f)
    vocab = data.get('model', {}).get('vocab', {})
    pairs = vocab.items() if isinstance(vocab, dict) else (
        (entry[0], index) for index, entry in enumerate(vocab))     # Unigram: [[piece, score]]
    special = {token.get('id') for token in data.get('added_tokens', [])}
    texts = {}
    for piece, token in pairs:
        if token in special or not isinstance(piece, str):
            continue
        if len(piece) == 6 and piece.startswith('<0x') and piece.endswith('>'):
            try:
                texts[int(token)] = bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
            continue
        texts[int(token)] = piece.replace('\u2581', ' ').encode('utf-8')
    return texts


class ChoiceScores:
    """
    Which tokens start each choice, and what the logits of the first answer token say of them.

    Only for choices that start with different characters (else ``owners`` is None and why_not
    says so): then every token whose bytes are a prefix of a choice's starts that one choice.
    """

    def __init__(self, texts: Dict[int, bytes], choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.why_not = ''
        self.token_ids: Optional[np.ndarray] = None
        self.owners: Optional[np.ndarray] = None
        if len({choice[0] for choice in self.choices}) != len(self.choices):
            self.why_not = 'two choices start with the same character'
            return
        encoded = [choice.encode('utf-8') for choice in self.choices]
        prefixes = {data[:n]: index for index, data in enumerate(encoded)
                    for n in range(1, len(data) + 1)}
        owned = [(token, prefixes[text]) for token, text in texts.items() if text in prefixes]
        if {owner for _, owner in owned} != set(range(len(self.choices))):
            self.why_not = 'a choice starts with no token of the vocabulary'
            return
        self.token_ids = np.asarray([token for token, _ in owned], dtype=np.int64)
        self.owners = np.asarray([owner for _, owner in owned], dtype=np.int64)

    def probabilities(self, logits: np.ndarray) -> Dict[str, float]:
        """Return {choice: probability} from the logits of the first answer token."""
        scores = np.asarray(logits, dtype=np.float64)[self.token_ids]
        weights = np.exp(scores - scores.max())
        mass = np.bincount(self.owners, weights=weights, minlength=len(self.choices))
        return {choice: float(p) for choice, p in zip(self.choices, mass / mass.sum())}

    def best(self, logits: np.ndarray) -> str:
        """Return the choice of the highest-scoring token that starts a choice (greedy's pick)."""
        scores = np.asarray(logits, dtype=np.float64)[self.token_ids]
        return self.choices[int(self.owners[int(np.argmax(scores))])]
