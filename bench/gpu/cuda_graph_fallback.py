"""
On the GPU machine: what cuda_graph does on CUDA, and that it turns itself off where it cannot.

    python bench/gpu/cuda_graph_fallback.py --out results.json [--full /tmp/phi3v_full]

The tiny model (make_tiny_model; float32, so some of its nodes run on the CPU provider) and,
with --full, the full-size one (bench/gpu/full_model.py; int4 and fp16, all on CUDA); each as it
is and with its decoder's rotary caches chosen by an If on the sequence length, the shape
onnxruntime-genai's builder gives a LongRoPE decoder (both branches are the same caches here, so
the answers must not change). For each:
onnxruntime-genai loading it directly with enable_cuda_graph 1 (what ONNX Runtime says), then the
package's worker (EngineClient, provider cuda) with cuda_graph off and on: what /diagnostics
would say (info['cuda_graph']), the log, and one answer about a camera frame. Prints a table
and writes the numbers.
"""
import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, '..', '..'), os.path.join(HERE, '..', '..', 'test')]

LONGROPE_ORIGINAL_POSITIONS = 4096   # Phi-3-vision-128k's original_max_position_embeddings


def with_longrope_if(folder: str, out: str) -> str:
    """
    Write out: folder with its decoder's cos/sin caches chosen by an If (total length > 4096).

    Every file but the decoder's graph is a hard link to folder's (the full-size model's weights
    are gigabytes, kept as external data the new graph still points to).
    """
    import onnx
    from onnx import helper, TensorProto
    os.makedirs(out)
    for name in os.listdir(folder):   # hard links: ONNX Runtime refuses data outside the folder
        os.link(os.path.join(folder, name), os.path.join(out, name))
    with open(os.path.join(folder, 'genai_config.json')) as f:
        decoder_file = json.load(f)['model']['decoder']['filename']
    os.unlink(os.path.join(out, decoder_file))
    model = onnx.load(os.path.join(folder, decoder_file), load_external_data=False)
    graph = model.graph
    attention = [n for n in graph.node if n.op_type == 'GroupQueryAttention']
    total_len, cos_cache, sin_cache = attention[0].input[6:9]
    initializers = {tensor.name: tensor.data_type for tensor in graph.initializer}
    cache_type = initializers.get(cos_cache, TensorProto.FLOAT)

    def branch(name):
        return helper.make_graph(
            [helper.make_node('Identity', [cos_cache], [f'{name}_cos']),
             helper.make_node('Identity', [sin_cache], [f'{name}_sin'])], name, [],
            [helper.make_tensor_value_info(f'{name}_cos', cache_type, None),
             helper.make_tensor_value_info(f'{name}_sin', cache_type, None)])

    threshold = helper.make_node('Constant', [], ['longrope_threshold'], value=helper.make_tensor(
        'longrope_threshold_value', TensorProto.INT32, [], [LONGROPE_ORIGINAL_POSITIONS]))
    longer = helper.make_node('Greater', [total_len, 'longrope_threshold'], ['longrope_is_long'])
    choose = helper.make_node('If', ['longrope_is_long'], ['rope_cos', 'rope_sin'],
                              then_branch=branch('long_factors'),
                              else_branch=branch('short_factors'))
    for node in attention:
        node.input[7], node.input[8] = 'rope_cos', 'rope_sin'
    nodes = list(graph.node)
    first = nodes.index(attention[0])
    nodes[first:first] = [threshold, longer, choose]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, os.path.join(out, decoder_file))
    return out


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


def through_worker(folder: str, cuda_graph: bool, frame) -> dict:
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
            answers = []
            for _ in range(3):
                done.clear()
                client.submit(Request(prompt='What is in the image?', images=(frame,),
                                      settings=GenerationSettings(max_new_tokens=64)),
                              on_result=lambda result: (box.update(result=result), done.set()),
                              on_piece=lambda piece: None)
                assert done.wait(120), 'no answer in 120 s'
                result = box['result']
                answers.append({'ok': result.ok, 'error': result.error,
                                'generated_tokens': result.generated_tokens,
                                'decode_tok_s': round(result.decode_tokens_per_s, 1),
                                'text': result.text})
            row['answers'] = answers
        return row
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True)
    parser.add_argument('--work', default='/tmp/phi3v_gpu/cuda_graph')
    parser.add_argument('--full', metavar='FOLDER',
                        help='also the full-size model bench/gpu/full_model.py wrote there')
    args = parser.parse_args()
    import onnxruntime_genai as og
    from phi3v_ros.tools.make_tiny_model import make_tiny_model
    from phi3v_test_utils import gradient_image
    shutil.rmtree(args.work, ignore_errors=True)
    tiny = str(make_tiny_model(os.path.join(args.work, 'tiny'), layout='auto'))
    models = [('tiny', tiny), ('tiny_longrope_if',
                               with_longrope_if(tiny, os.path.join(args.work, 'tiny_if')))]
    if args.full:
        full_if = with_longrope_if(args.full, os.path.join(args.work, 'full_if'))
        models += [('full', args.full), ('full_longrope_if', full_if)]
    frame = gradient_image(480, 640, seed=3)
    report = {'genai_version': og.__version__, 'models': {}}
    for name, folder in models:
        entry = {'direct_load_with_graph': direct_load(og, folder),
                 'runs': [through_worker(folder, graph, frame) for graph in (False, True)]}
        report['models'][name] = entry
        print(f'\n{name}: onnxruntime-genai with enable_cuda_graph 1: '
              f'{entry["direct_load_with_graph"]}')
        print('| cuda_graph asked | ready (s) | info cuda_graph | answers ok | tokens | tok/s |')
        for run in entry['runs']:
            answers = run.get('answers', [])
            print(f'| {run["cuda_graph_asked"]} | {run["ready"]} ({run["ready_s"]}) | '
                  f'{str(run["cuda_graph"])[:120]} | {sum(a["ok"] for a in answers)}/'
                  f'{len(answers)} | {[a["generated_tokens"] for a in answers]} | '
                  f'{[a["decode_tok_s"] for a in answers]} |')
            for line in run['log']:
                if 'cuda_graph' in line or 'load failed' in line:
                    print(f'    log: {line[:300]}')
        off, on = (run.get('answers', []) for run in entry['runs'])
        entry['same_text_graph_on_vs_off'] = bool(off and on and off[0]['text'] == on[0]['text'])
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
