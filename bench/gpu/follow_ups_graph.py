"""
On the GPU machine: follow-ups with cuda_graph on, over the prepared LongRoPE decoder.

    python bench/gpu/follow_ups_graph.py --model /tmp/phi3v_full_lr --out results.json

The decoder is prepared as the worker does (graph_decoder.py, logits checked), then the engine
with the graph answers a question kept for follow-ups, two follow-ups, and the same follow-up
asked fresh, three times: whether each answer came, whether the follow-ups continued, and their
times to first token. Prints a line per run and writes the numbers.
"""
import argparse
import json
import os
import sys

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True)
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    import onnxruntime_genai as og
    from bench.preprocessing import camera_frame
    from phi3v_ros.engine import graph_decoder
    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.engine.generation import GenerationSettings, Request
    folder = graph_decoder.prepare_for_graph(args.model, graph_decoder.logits_check(og, 'cuda'),
                                             print) or args.model
    engine = Engine(EngineConfig(model_path=folder, provider='cuda', cuda_graph=True))
    settings = GenerationSettings(max_new_tokens=64)
    frame = camera_frame(480, 640)
    runs = []
    for _ in range(3):
        first = engine.generate(Request(prompt='What is on the table?', images=(frame,),
                                        settings=settings, keep_tokens=1024))
        follow = [engine.generate(Request(prompt=question, settings=settings, follow_up=True))
                  for question in ('Which one is red?', 'And the blue one?')]
        fresh = engine.generate(Request(prompt='Which one is red?', images=(frame,),
                                        settings=settings))
        row = {'ok': [r.ok for r in [first] + follow + [fresh]],
               'errors': [r.error for r in [first] + follow + [fresh] if not r.ok],
               'continued': [r.continued for r in follow],
               'ttft_ms': {'first': first.time_to_first_token_s * 1000,
                           'follow_ups': [r.time_to_first_token_s * 1000 for r in follow],
                           'fresh': fresh.time_to_first_token_s * 1000},
               'decode_tok_s': {'first': first.decode_tokens_per_s,
                                'follow_ups': [r.decode_tokens_per_s for r in follow]}}
        print(json.dumps(row))
        runs.append(row)
    with open(args.out, 'w') as f:
        json.dump({'genai_version': og.__version__, 'model': folder, 'runs': runs}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
