"""
On the GPU machine: cuda_graph on the LongRoPE decoder, and off safely where it cannot be had.

    python bench/gpu/cuda_graph_fallback.py --out results.json \
        [--full /tmp/phi3v_full] [--full-longrope /tmp/phi3v_full_longrope]

Models: the tiny model (make_tiny_model; float32, so some of its nodes run on the CPU provider)
as it is and with LongRoPE (its If), and with --full / --full-longrope the full-size ones
(bench/gpu/full_model.py, int4; --longrope builds the decoder through onnxruntime-genai's builder
with the published model's rope scaling, which gives the If). For each: onnxruntime-genai loading
it directly with enable_cuda_graph 1 (what ONNX Runtime says), then the package's worker
(EngineClient, provider cuda) with cuda_graph off and on: what /diagnostics would say
(info['cuda_graph']), the log (the decoder prepared without the If, graph_decoder.py), three
answers about a camera frame with their decode speed, and one request that would pass the
prepared decoder's 4,096 tokens. Prints a table and writes the numbers.
"""
import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, '..', '..'), os.path.join(HERE, '..', '..', 'test')]

NEW_TOKENS = 256
# with a 640x480 frame's ~1,900 prompt tokens: past the 4,096 a prepared LongRoPE decoder takes
PAST_BOUND_NEW_TOKENS = 2500


def direct_load(og, folder: str) -> str:
    """Load the folder with onnxruntime-genai alone, enable_cuda_graph 1: 'loaded' or why not."""
    config = og.Config(folder)
    config.clear_providers()
    config.append_provider('cuda')
    config.set_provider_option('cuda', 'enable_cuda_graph', '1')
    try:
        model = og.Model(config)
        del model
        return 'loaded'
    except Exception as exc:  # noqa: BLE001 - the refusal is what is measured
        return f'{type(exc).__name__}: {exc}'.strip().splitlines()[0]


def through_worker(folder: str, cuda_graph: bool, frame, long: bool = False) -> dict:
    import threading
    from phi3v_ros.base.errors import EngineError
    from phi3v_ros.engine.engine import EngineConfig
    from phi3v_ros.engine.engine_client import EngineClient
    from phi3v_ros.engine.generation import GenerationSettings, Request
    logs, done, box = [], threading.Event(), {}
    client = EngineClient(EngineConfig(model_path=folder, provider='cuda', cuda_graph=cuda_graph),
                          log=logs.append)
    start = time.perf_counter()
    client.start()
    try:
        try:
            ready = client.wait_ready(300)
        except EngineError as exc:    # the load failed: that is a result here
            ready, logs = False, logs + [f'load failed: {exc}']
        row = {'cuda_graph_asked': cuda_graph, 'ready': ready,
               'ready_s': round(time.perf_counter() - start, 2),
               'provider': client.info.get('provider'),
               'cuda_graph': client.info.get('cuda_graph'),
               'log': [line[:400] for line in logs]}
        if ready:
            def ask(max_new_tokens):
                done.clear()
                client.submit(Request(prompt='What is in the image?', images=(frame,),
                                      settings=GenerationSettings(
                                          max_new_tokens=max_new_tokens)),
                              on_result=lambda result: (box.update(result=result), done.set()),
                              on_piece=lambda piece: None)
                assert done.wait(300), 'no answer in 300 s'
                result = box['result']
                return {'ok': result.ok, 'error': result.error,
                        'prompt_tokens': result.prompt_tokens,
                        'generated_tokens': result.generated_tokens,
                        'time_to_first_token_s': result.time_to_first_token_s,
                        'decode_tok_s': round(result.decode_tokens_per_s, 1),
                        'text': result.text}

            row['answers'] = [ask(NEW_TOKENS) for _ in range(3)]
            # past 4,096 tokens with the frame's ~1,900: refused up front on a prepared decoder
            row['past_4096'] = ask(PAST_BOUND_NEW_TOKENS) if long else None
        return row
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True)
    parser.add_argument('--work', default='/tmp/phi3v_gpu/cuda_graph')
    parser.add_argument('--full', metavar='FOLDER',
                        help='the full-size model bench/gpu/full_model.py wrote there')
    parser.add_argument('--full-longrope', metavar='FOLDER',
                        help='the full-size model full_model.py --longrope wrote there')
    parser.add_argument('--no-tiny', action='store_true', help='the full-size models only')
    args = parser.parse_args()
    import onnxruntime_genai as og
    from phi3v_ros.tools.make_tiny_model import make_tiny_model
    from phi3v_test_utils import gradient_image
    shutil.rmtree(args.work, ignore_errors=True)
    models = [('tiny', str(make_tiny_model(os.path.join(args.work, 'tiny'), layout='auto')),
               False),
              ('tiny_longrope', str(make_tiny_model(
                  os.path.join(args.work, 'tiny_longrope'), layout='auto', context_length=8192,
                  longrope_original=4096)), False)][2 if args.no_tiny else 0:]
    if args.full:
        models.append(('full', args.full, False))
    if args.full_longrope:
        models.append(('full_longrope', args.full_longrope, True))
    frame = gradient_image(480, 640, seed=3)
    report = {'genai_version': og.__version__, 'new_tokens': NEW_TOKENS, 'models': {}}
    for name, folder, long in models:
        entry = {'direct_load_with_graph': direct_load(og, folder),
                 'runs': [through_worker(folder, graph, frame, long) for graph in (False, True)]}
        report['models'][name] = entry
        print(f'\n{name}: onnxruntime-genai with enable_cuda_graph 1: '
              f'{entry["direct_load_with_graph"]}')
        print('| cuda_graph asked | ready (s) | info cuda_graph | answers ok | tokens | tok/s |'
              ' past 4,096 tokens |')
        for run in entry['runs']:
            answers, past = run.get('answers', []), run.get('past_4096')
            past_text = '' if not past else ('answered' if past['ok'] else past['error'][:90])
            print(f'| {run["cuda_graph_asked"]} | {run["ready"]} ({run["ready_s"]}) | '
                  f'{str(run["cuda_graph"])[:120]} | {sum(a["ok"] for a in answers)}/'
                  f'{len(answers)} | {[a["generated_tokens"] for a in answers]} | '
                  f'{[a["decode_tok_s"] for a in answers]} | {past_text} |')
            for line in run['log']:
                if 'cuda_graph' in line or 'load failed' in line:
                    print(f'    log: {line[:300]}')
        off, on = (run.get('answers', []) for run in entry['runs'])
        entry['same_text_graph_on_vs_off'] = bool(off and on and off[0]['text'] == on[0]['text'])
        if off and on and all(a['ok'] for a in off + on):
            entry['decode_speedup'] = round(
                min(a['decode_tok_s'] for a in on) / max(a['decode_tok_s'] for a in off), 2)
            print(f'graph on / off, decode (slowest on / fastest off): {entry["decode_speedup"]}x')
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
