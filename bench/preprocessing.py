"""Time to first token by image preprocessing and crop budget, with the engine called directly.

    python -m bench.preprocessing [--runs 7] [--model DIR --provider cuda] [--out bench/results.json]

For each frame size it answers the same question on the same (noisy, camera-like) frame with
  - `processor`: the frame bounded to 1344 px, encoded to PNG, onnxruntime-genai's processor
    (16 crops always, padded to 17): what the node did before it built the inputs itself;
  - `fast` and `exact` own inputs (hd_transform.prepare_image) at crop budgets 16, 4 and 1;
and reports the median time to first token (preparation, vision encoder, prefill, first token),
the median preparation time alone, the prompt tokens and the crops through the vision encoder.
Without --model it generates the tiny random-weight model (CPU); on the GPU machine pass the
full-size model of bench/gpu/full_model.py and --provider cuda. The numbers are merged into the
results file under `preprocessing` (keyed by provider).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Dict, List

import numpy as np

from bench.common import merge_results

FRAMES = ((480, 640), (1080, 1920))
CASES = (('processor', 16), ('fast', 16), ('fast', 4), ('fast', 1), ('exact', 16),
         ('exact', 4))
QUESTION = 'What is in front of the robot?'


def camera_frame(height: int, width: int) -> np.ndarray:
    """A gradient with sensor-like noise: PNG cannot compress it away, as with a real camera."""
    rng = np.random.default_rng(height + width)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) * 127 // max(height + width - 2, 1)], axis=-1)
    return np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)


def measure(model: str, provider: str, runs: int) -> Dict[str, object]:
    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.engine.generation import GenerationSettings, Request
    engines = {mode: Engine(EngineConfig(model_path=model, provider=provider,
                                         image_preprocessing=mode))
               for mode in ('processor', 'fast', 'exact')}
    rows: List[Dict[str, object]] = []
    for height, width in FRAMES:
        frame = camera_frame(height, width)
        for mode, crops in CASES:
            engine = engines[mode]
            settings = GenerationSettings(max_new_tokens=1, max_crops=crops)
            request = Request(prompt=QUESTION, images=(frame,), settings=settings)
            first, times = first_token_times(engine, request, runs,
                                             f'{mode} {crops} crops at {width}x{height}')
            rows.append({
                # a release before 0.7 runs fast and exact through the processor: say what ran
                'frame': f'{width}x{height}', 'preprocessing': engine.image_preprocessing,
                'max_crops': crops,
                'prompt_tokens': first.prompt_tokens, 'crops': first.image_crops, **times,
            })
    first = engines['processor']
    return {'provider': first.provider, 'onnxruntime_genai': first.genai_version,
            'runs': runs, 'model': model, 'rows': rows}


def first_token_times(engine, request, runs: int, what: str):
    """
    Answer request runs times after a warm-up; return (the first result, its timings in ms).

    Timings: the median time to first token with its min and max, and the median preparation.
    """
    engine.generate(request)   # warm-up: allocations, caches
    results = [engine.generate(request) for _ in range(runs)]
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f'{what}: {failed[0]}')
    ttft = [r.time_to_first_token_s for r in results]
    return results[0], {'ttft_ms': median_ms(ttft), 'ttft_ms_min': round(min(ttft) * 1e3, 1),
                        'ttft_ms_max': round(max(ttft) * 1e3, 1),
                        'prepare_ms': median_ms([r.image_prepare_s for r in results])}


def timing_cells(row: Dict[str, object]) -> str:
    """Return the table cells of first_token_times' numbers: '**83** (80 to 105) | 15.9 |'."""
    return (f'**{row["ttft_ms"]:g}** ({row["ttft_ms_min"]:g} to {row["ttft_ms_max"]:g}) | '
            f'{row["prepare_ms"]:g} |')


def median_ms(values: List[float]) -> float:
    return round(statistics.median(values) * 1e3, 1)


def table(measured: Dict[str, object]) -> str:
    lines = [f'provider {measured["provider"]}, onnxruntime-genai {measured["onnxruntime_genai"]}'
             f', median of {measured["runs"]}',
             '| frame | preprocessing | max_crops | prompt tokens | crops through the encoder '
             '| time to first token, ms (min to max) | of which preparing the image, ms (*) |',
             '|---|---|---|---|---|---|---|']
    for row in measured['rows']:
        budget = '16 (fixed)' if row['preprocessing'] == 'processor' else row['max_crops']
        lines.append(f'| {row["frame"]} | {row["preprocessing"]} | {budget} | '
                     f'{row["prompt_tokens"]:,} | {row["crops"]} | {timing_cells(row)}')
    lines.append('(*) processor: bounding and PNG encoding only (its decoding and transform are in '
                 'the time to first token); fast and exact: the whole HD transform.')
    return '\n'.join(lines)


def engine_bench_main(description: str, key: str, measure, table, argv=None) -> int:
    """
    Run an engine-direct benchmark: measure(model, provider, runs), print table(measured).

    The command line of this file and bench/cameras.py (--runs, --model, --provider, --out); the
    numbers are merged into the results file under key, by provider.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=7)
    parser.add_argument('--model', help='model folder (default: a tiny model made here)')
    parser.add_argument('--provider', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--out', default='bench/results.json',
                        help='results file to merge the numbers into (created if missing)')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from phi3v_ros.tools.make_tiny_model import make_tiny_model
            model = str(make_tiny_model(os.path.join(scratch, 'tiny'), seed=0, layout='auto'))
        measured = measure(model, args.provider, args.runs)
    merge_results(args.out, lambda results: results.setdefault(key, {}).update(
        {measured['provider']: measured}))
    print(table(measured))
    print(f'numbers written to {args.out}')
    return 0


def main(argv=None) -> int:
    return engine_bench_main(__doc__, 'preprocessing', measure, table, argv)


if __name__ == '__main__':
    sys.exit(main())
