"""
What constrained answers cost, side by side in one run, with the engine called directly.

    python -m bench.constrained [--runs 5] [--out bench/results.json]                 # CPU
    python -m bench.constrained --model DIR --provider cuda --runs 5                   # GPU

1. Per token: the same long answer free, as a JSON string (json_schema) and under a regex; the
   median decode speed of each and the cost the grammar engine adds per token. The grammar engine
   works over the whole vocabulary at every token, so on the CPU it is measured with a tiny model
   of Phi-3's vocabulary (32,064 tokens; make_tiny_model --vocabulary phi3) beside the 1,024 of
   the usual tiny model. On the GPU, the full-size random model (bench/gpu/full_model.py) has
   Phi-3's vocabulary already.
2. A checklist: five questions about one 640x480 frame asked one by one (five requests, each a
   one-field answer) against one request whose JSON schema has the five fields (one vision
   encoding, one prefill): the total time of each way.

Results are merged into --out under `constrained`, keyed by provider.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Dict, List

from bench.common import merge_results
from bench.preprocessing import camera_frame

LONG_ANSWER = 160
FORMATS = {
    'free': None,
    'json_schema': ('json_schema', {'type': 'object', 'properties': {
        'description': {'type': 'string', 'maxLength': 4000}}, 'required': ['description'],
        'additionalProperties': False}),
    'regex': ('regex', '[a-z ,.]{1,4000}'),
}
CHECKLIST = (
    ('door_open', 'Is the door open?', {'type': 'boolean'}),
    ('people', 'How many people are there?', {'type': 'integer', 'minimum': 0, 'maximum': 20}),
    ('light_on', 'Is the light on?', {'type': 'boolean'}),
    ('robot_visible', 'Is a robot visible?', {'type': 'boolean'}),
    ('floor', 'What colour is the floor?', {'enum': ['grey', 'brown', 'white', 'black',
                                                     'other']}),
)


def per_token(engine, runs: int) -> Dict[str, dict]:
    from phi3v_ros.engine.generation import GenerationSettings, Request
    rows = {}
    for name, answer_format in FORMATS.items():
        request = Request(prompt='Describe the room in detail.', answer_format=answer_format,
                          settings=GenerationSettings(max_new_tokens=LONG_ANSWER))
        engine.generate(request)     # warm-up
        results = [engine.generate(request) for _ in range(runs)]
        bad = [r.error for r in results if r.stop_reason.value == 'error']
        if bad:
            raise RuntimeError(f'{name}: {bad[0]}')
        speeds = [r.decode_tokens_per_s for r in results]
        rows[name] = {'tokens': results[0].generated_tokens,
                      'decode_tok_s': round(statistics.median(speeds), 1),
                      'decode_tok_s_min': round(min(speeds), 1),
                      'ms_per_token': round(1e3 / statistics.median(speeds), 3)}
    free = rows['free']['ms_per_token']
    for name, row in rows.items():
        row['added_ms_per_token'] = round(row['ms_per_token'] - free, 3)
        row['slower_percent'] = round(100.0 * (row['ms_per_token'] / free - 1.0), 1)
    return rows


def checklist(engine, runs: int) -> Dict[str, object]:
    from phi3v_ros.engine.generation import GenerationSettings, Request
    frame = camera_frame(480, 640)
    settings = GenerationSettings(max_new_tokens=96)
    one_by_one = [Request(prompt=question, images=(frame,), settings=settings,
                          answer_format=('json_schema', {
                              'type': 'object', 'properties': {key: schema}, 'required': [key],
                              'additionalProperties': False}))
                  for key, question, schema in CHECKLIST]
    together = Request(prompt=' '.join(question for _, question, _ in CHECKLIST),
                       images=(frame,), settings=settings, answer_format=('json_schema', {
                           'type': 'object',
                           'properties': {key: schema for key, _, schema in CHECKLIST},
                           'required': [key for key, _, _ in CHECKLIST],
                           'additionalProperties': False}))
    for request in one_by_one + [together]:      # warm-up
        engine.generate(request)
    separate, joint = [], []
    for _ in range(runs):
        results = [engine.generate(request) for request in one_by_one]
        if not all(r.ok for r in results):
            raise RuntimeError(f'checklist: {[r.error for r in results if not r.ok][0]}')
        separate.append(sum(r.total_s for r in results))
        result = engine.generate(together)
        if not result.ok:
            raise RuntimeError(f'checklist: {result.error}')
        joint.append(result.total_s)
    return {'questions': len(CHECKLIST), 'one_by_one_ms': round(statistics.median(separate) * 1e3, 1),
            'one_request_ms': round(statistics.median(joint) * 1e3, 1),
            'ratio': round(statistics.median(joint) / statistics.median(separate), 3),
            'one_request_tokens': result.generated_tokens, 'answer_example': result.text}


def measure(models: Dict[str, str], provider: str, runs: int) -> Dict[str, object]:
    from phi3v_ros.engine.engine import Engine, EngineConfig
    import onnxruntime_genai as og
    measured: Dict[str, object] = {'provider': provider, 'runs': runs,
                                   'onnxruntime_genai': og.__version__, 'per_token': {}}
    for label, model in models.items():
        engine = Engine(EngineConfig(model_path=model, provider=provider))
        measured['per_token'][label] = per_token(engine, runs)
    label, model = next(iter(models.items()))
    measured['checklist'] = checklist(Engine(EngineConfig(model_path=model, provider=provider)),
                                      runs)
    measured['checklist']['model'] = label
    return measured


def table(measured: Dict[str, object]) -> str:
    lines = [f'provider {measured["provider"]}, onnxruntime-genai {measured["onnxruntime_genai"]}'
             f', median of {measured["runs"]}', '',
             '| model | answer | tokens | decode tok/s | ms/token | added ms/token | slower |',
             '|---|---|---|---|---|---|---|']
    for label, rows in measured['per_token'].items():
        for name, row in rows.items():
            lines.append(f'| {label} | {name} | {row["tokens"]} | {row["decode_tok_s"]:g} | '
                         f'{row["ms_per_token"]:g} | {row["added_ms_per_token"]:g} | '
                         f'{row["slower_percent"]:g} % |')
    c = measured['checklist']
    lines += ['', f'checklist of {c["questions"]} questions on one 640x480 frame ({c["model"]}): '
                  f'one by one {c["one_by_one_ms"]:g} ms, in one request {c["one_request_ms"]:g} ms '
                  f'({c["ratio"]:g}x); e.g. {c["answer_example"]}']
    return '\n'.join(lines)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--model', help="model folder (default: tiny models made here, Phi-3's "
                                        'vocabulary and the usual one)')
    parser.add_argument('--provider', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--out', default='bench/results.json')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.model:
            models = {'given model': args.model}
        else:
            from phi3v_ros.tools.make_tiny_model import make_tiny_model
            models = {vocabulary: str(make_tiny_model(os.path.join(scratch, vocabulary), seed=0,
                                                      layout='auto', vocabulary=vocabulary))
                      for vocabulary in ('phi3', 'tiny')}
        measured = measure(models, args.provider, args.runs)
    merge_results(args.out, lambda results: results.setdefault('constrained', {}).update(
        {measured['provider']: measured}))
    print(table(measured))
    print(f'numbers written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
