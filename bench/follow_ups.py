"""
What a follow-up question saves, side by side in one run, with the engine called directly.

    python -m bench.follow_ups [--runs 5] [--out bench/results.json]                  # CPU
    python -m bench.follow_ups --model DIR --provider cuda --runs 5                    # GPU

For each run, about one 640x480 camera frame at max_crops (16 by default, the published model's):
1. the question "What is on the table?" asked fresh, kept for follow-ups (keep_tokens);
2. "Which one of them is red?" as its follow-up (only its own turn is prefilled);
3. the same follow-up question asked fresh, about the same frame (vision encoder over every crop,
   the image tokens prefilled again): what the follow-up is measured against.
Time to first token (the engine's: image preparation, vision, prefill, first token) of 2 and 3,
their ratio, and the split of 3 into what the follow-up skips. Results are merged into --out under
`follow_ups`, keyed by provider.
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

FIRST = 'What is on the table?'
FOLLOW_UP = 'Which one of them is red?'
NEW_TOKENS = 16
KEEP_TOKENS = 1024


def measure(model: str, provider: str, runs: int, max_crops: int) -> Dict[str, object]:
    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.engine.generation import GenerationSettings, Request
    engine = Engine(EngineConfig(model_path=model, provider=provider))
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS, max_crops=max_crops)
    frame = camera_frame(480, 640)
    rows = []
    for run in range(runs + 1):                     # the first run warms up, not counted
        first = engine.generate(Request(prompt=FIRST, images=(frame,), settings=settings,
                                        keep_tokens=KEEP_TOKENS))
        follow = engine.generate(Request(prompt=FOLLOW_UP, settings=settings, follow_up=True))
        fresh = engine.generate(Request(prompt=FOLLOW_UP, images=(frame,), settings=settings))
        for result in (first, follow, fresh):
            assert result.ok, result.error
        assert follow.continued and not fresh.continued
        if run:
            rows.append({'first_ttft_s': first.time_to_first_token_s,
                         'follow_up_ttft_s': follow.time_to_first_token_s,
                         'fresh_ttft_s': fresh.time_to_first_token_s,
                         'follow_up_prompt_tokens': follow.prompt_tokens,
                         'fresh_prompt_tokens': fresh.prompt_tokens,
                         'fresh_image_tokens': fresh.image_tokens,
                         'fresh_image_prepare_s': fresh.image_prepare_s,
                         'decode_tok_s': fresh.decode_tokens_per_s})
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    median['ratio_follow_up_to_fresh'] = median['follow_up_ttft_s'] / median['fresh_ttft_s']
    return {'model': model, 'genai_version': engine.genai_version, 'max_crops': max_crops,
            'runs': rows, 'median': median}


def table(measured: Dict[str, object]) -> str:
    m = measured['median']
    return '\n'.join([
        f'| {measured["max_crops"]} crops, 640x480 | time to first token (median of '
        f'{len(measured["runs"])}) | prompt tokens |',
        '|---|---|---|',
        f'| first question (fresh, kept) | {m["first_ttft_s"] * 1000:.1f} ms | |',
        f'| follow-up | {m["follow_up_ttft_s"] * 1000:.1f} ms | '
        f'{m["follow_up_prompt_tokens"]:.0f} |',
        f'| the same question asked fresh | {m["fresh_ttft_s"] * 1000:.1f} ms | '
        f'{m["fresh_prompt_tokens"]:.0f} ({m["fresh_image_tokens"]:.0f} image) |',
        f'| follow-up / fresh | {m["ratio_follow_up_to_fresh"]:.3f} | |',
        f'decode {m["decode_tok_s"]:.0f} tok/s; image preparation of the fresh question '
        f'{m["fresh_image_prepare_s"] * 1000:.1f} ms'])


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', help='model folder (default: the tiny model, made here)')
    parser.add_argument('--provider', default='cpu')
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--max-crops', type=int, default=16)
    parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__),
                                                      'results.json'))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        model = args.model
        if model is None:
            from phi3v_ros.tools.make_tiny_model import make_tiny_model
            model = str(make_tiny_model(os.path.join(work, 'tiny'), layout='auto'))
        measured = measure(model, args.provider, args.runs, args.max_crops)
    merge_results(args.out, lambda results: results.setdefault('follow_ups', {}).update(
        {args.provider: measured}))
    print(table(measured))
    print(f'numbers written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
