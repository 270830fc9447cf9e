"""Time to first token for one and two cameras at crop budgets 16 and 4, engine called directly.

    python -m bench.cameras [--runs 7] [--model DIR --provider cuda] [--out bench/results.json]

Each case answers the same question about 640x480 camera-like frames (fast preprocessing, the
default): one camera, or two cameras named by topic in the prompt (README, "Several cameras"), at
max_crops 16 and 4. It reports the median time to first token (image preparation, vision encoder,
prefill, first token), the prompt and image tokens and the crops through the vision encoder.
Without --model it generates the tiny random-weight model (CPU); on the GPU machine pass the
full-size model of bench/gpu/full_model.py and --provider cuda. The numbers are merged into the
results file under `cameras` (keyed by provider).
"""
from __future__ import annotations

import sys
from typing import Dict, List

from bench.preprocessing import camera_frame, engine_bench_main, first_token_times, timing_cells

QUESTION = 'Is the gripper holding the cup the head camera sees?'
CAMERAS = ('/head/image_raw', '/wrist/image_raw')
CASES = ((1, 16), (2, 16), (1, 4), (2, 4))    # (cameras, max_crops)


def measure(model: str, provider: str, runs: int) -> Dict[str, object]:
    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.engine.generation import GenerationSettings, Request
    engine = Engine(EngineConfig(model_path=model, provider=provider))
    # two different pictures: the wrist frame is the head frame mirrored
    frames = (camera_frame(480, 640), camera_frame(480, 640)[:, ::-1].copy())
    rows: List[Dict[str, object]] = []
    for cameras, crops in CASES:
        request = Request(prompt=QUESTION, images=frames[:cameras], cameras=CAMERAS[:cameras],
                          settings=GenerationSettings(max_new_tokens=1, max_crops=crops))
        first, times = first_token_times(engine, request, runs,
                                         f'{cameras} cameras at {crops} crops')
        rows.append({
            'cameras': cameras, 'max_crops': crops, 'preprocessing': engine.image_preprocessing,
            'prompt_tokens': first.prompt_tokens, 'image_tokens': first.image_tokens,
            'crops': first.image_crops, **times,
        })
    return {'provider': engine.provider, 'onnxruntime_genai': engine.genai_version, 'runs': runs,
            'model': model, 'frame': '640x480', 'rows': rows}


def table(measured: Dict[str, object]) -> str:
    lines = [f'provider {measured["provider"]}, onnxruntime-genai {measured["onnxruntime_genai"]}'
             f', {measured["frame"]} frames, median of {measured["runs"]}',
             '| cameras | max_crops | prompt tokens (image tokens) | crops through the encoder '
             '| time to first token, ms (min to max) | of which preparing the images, ms |',
             '|---|---|---|---|---|---|']
    for row in measured['rows']:
        lines.append(f'| {row["cameras"]} | {row["max_crops"]} | {row["prompt_tokens"]:,} '
                     f'({row["image_tokens"]:,}) | {row["crops"]} | {timing_cells(row)}')
    return '\n'.join(lines)


def main(argv=None) -> int:
    return engine_bench_main(__doc__, 'cameras', measure, table, argv)


if __name__ == '__main__':
    sys.exit(main())
