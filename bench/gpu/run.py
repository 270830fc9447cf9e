"""
GPU measurements, side by side in one run: raw onnxruntime-genai vs our engine vs the node.

    python bench/gpu/run.py --model /tmp/phi3v_gpu/model --out bench/gpu/results.json

Each configuration runs in its own process, so its peak GPU memory (nvidia-smi, sampled every 50
ms) is its own. The question is one 640x480 camera frame and a short prompt, greedy, 256 new tokens
(the model's end token can never win, so every run generates exactly 256).
- raw:    the published example's way: og.Model(folder) as configured (CUDA graph off),
          max_length 7680.
- engine: phi3v_ros.engine.engine.Engine, max_length sized per request, CUDA graph off and on.
- node:   vision_qa_node as its own process, prompt over DDS, answer and streamed pieces back.
Then functional checks on CUDA: streaming, cancel, worker SIGKILL and restart.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'test')]

PROMPT = 'Describe what the robot camera sees in detail.'
RAW_MAX_LENGTH = 7680


def frame():
    from phi3v_test_utils import gradient_image
    return gradient_image(480, 640, seed=3)


def summarise(values):
    values = sorted(values)
    return {'median': statistics.median(values), 'min': values[0], 'max': values[-1],
            'n': len(values)}


# -- children (one configuration each) ------------------------------------------------------------

def child_raw(args) -> dict:
    import onnxruntime_genai as og
    from phi3v_ros.engine.image_preparation import encode_image
    model = og.Model(args.model)
    processor = model.create_multimodal_processor()
    png = encode_image(frame(), 'png')
    prompt = f'<|user|>\n<|image_1|>\n{PROMPT}<|end|>\n<|assistant|>\n'
    runs = []
    for _ in range(args.warmup + args.repeats):
        start = time.perf_counter()
        inputs = processor(prompt, images=og.Images.open_bytes(png))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=RAW_MAX_LENGTH, do_sample=False)
        generator = og.Generator(model, params)
        generator.set_inputs(inputs)
        tokens, first = [], None
        while not generator.is_done() and len(tokens) < args.new_tokens:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        del generator
        runs.append({'ttft_s': first - start, 'decode_tok_s': (len(tokens) - 1) / (end - first),
                     'total_s': end - start, 'tokens': len(tokens),
                     'text': processor.decode(tokens)})
    return finish(runs[args.warmup:], {'max_length': RAW_MAX_LENGTH})


def child_engine(args) -> dict:
    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.engine.generation import GenerationSettings, Request
    engine = Engine(EngineConfig(model_path=args.model, provider=args.provider,
                                 cuda_graph=args.cuda_graph))
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    runs, max_length = [], 0
    for index in range(args.warmup + args.repeats):
        if index == 1:   # a request of another length in between: per-request max_length holds
            other = engine.generate(Request(prompt='Say something short.',
                                            settings=GenerationSettings(max_new_tokens=32)))
            assert other.ok, other.error
        result = engine.generate(Request(prompt=PROMPT, images=(frame(),), settings=settings))
        assert result.ok, result.error
        max_length = result.max_length
        runs.append({'ttft_s': result.time_to_first_token_s,
                     'decode_tok_s': result.decode_tokens_per_s, 'total_s': result.total_s,
                     'tokens': result.generated_tokens, 'text': result.text,
                     'image_prepare_s': result.image_prepare_s,
                     'prompt_tokens': result.prompt_tokens})
    return finish(runs[args.warmup:], {'max_length': max_length, 'provider': engine.provider,
                                       'load_s': engine.load_s})


def finish(runs, extra) -> dict:
    texts = {run['text'] for run in runs}
    out = {key: summarise([run[key] for run in runs])
           for key in ('ttft_s', 'decode_tok_s', 'total_s')}
    out.update(extra, tokens=runs[0]['tokens'], text=runs[0]['text'], repeatable=len(texts) == 1,
               texts=[run['text'] for run in runs])
    if 'prompt_tokens' in runs[0]:
        out['prompt_tokens'] = runs[0]['prompt_tokens']
        out['image_prepare_s'] = summarise([run['image_prepare_s'] for run in runs])
    return out


# -- GPU memory of a process tree ---------------------------------------------------------------

class GpuMemory:
    """Peak nvidia-smi used_memory (MiB) of the given pids, sampled in the background."""

    enabled = True

    def __init__(self, pids_of):
        self.pids_of = pids_of
        self.peak_mib = 0
        self._stop = threading.Event()
        if not self.enabled:
            self._stop.set()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(['nvidia-smi', '--query-compute-apps=pid,used_memory',
                                      '--format=csv,noheader,nounits'], capture_output=True,
                                     text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            pids = set(self.pids_of())
            used = sum(int(mem)
                       for pid, mem in (line.split(', ') for line in out.strip().splitlines()
                                        if line)
                       if int(pid) in pids)
            self.peak_mib = max(self.peak_mib, used)
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


def run_child(kind, args, cuda_graph=False) -> dict:
    command = [sys.executable, __file__, '--child', kind, '--model', args.model, '--provider',
               args.provider, '--repeats', str(args.repeats), '--warmup', str(args.warmup),
               '--new-tokens', str(args.new_tokens)] + (['--cuda-graph'] if cuda_graph else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    memory = GpuMemory(lambda: [process.pid])
    out, _ = process.communicate()
    peak = memory.stop()
    if process.returncode != 0:
        return {'error': f'exit {process.returncode}'}
    result = json.loads(out.strip().splitlines()[-1])
    result['peak_gpu_mib'] = peak
    return result


# -- the node ------------------------------------------------------------------------------------

def node_runs(args, cuda_graph) -> dict:
    from ros_harness import NodeProcess, RosPeer, isolate_ros_domain
    isolate_ros_domain()
    os.environ['PYTHONPATH'] = ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')
    peer = RosPeer()
    node = NodeProcess({'model_path': args.model, 'provider': args.provider,
                        'cuda_graph': cuda_graph, 'max_new_tokens': args.new_tokens,
                        'diagnostics_period': 0.5,
                        'image_reliability': 'reliable'})
    piece_times = []
    from std_msgs.msg import String
    peer.node.create_subscription(String, 'answer/stream',
                                  lambda m: piece_times.append(time.perf_counter()), 1000)
    runs = []
    try:
        peer.wait_connected(120)
        peer.wait_ready(600)
        peer.deliver_frame(frame())
        for _ in range(args.warmup + args.repeats):
            with peer.changed:
                peer.answers.clear()
                peer.pieces.clear()
            piece_times.clear()
            start = time.perf_counter()
            peer.ask(PROMPT)
            assert peer.wait_for(lambda: len(peer.answers) == 1, 120), 'no answer'
            end = time.perf_counter()
            answer = peer.answers[0].data
            assert not answer.startswith('ERROR: '), answer
            streamed = peer.wait_for(lambda: ''.join(p.data for p in peer.pieces) == answer, 5)
            assert streamed, 'stream != answer'
            times = list(piece_times)
            # Tokens, not pieces: the node may coalesce pieces that arrive together.
            runs.append({'ttft_s': times[0] - start,
                         'decode_tok_s': (args.new_tokens - 1) / (times[-1] - times[0]),
                         'total_s': end - start, 'text': answer, 'tokens': args.new_tokens,
                         'pieces': len(times)})
        log = node.output()
    finally:
        node.stop()
        peer.close()
    # No nvidia-smi sampling here: timing only (GPU memory is measured on the engine children).
    result = finish(runs[args.warmup:], {})
    answered = [line for line in log.splitlines() if ' answered in ' in line]
    result['log_tail'] = answered[-args.repeats:]
    result.update(node_side(result['log_tail']))
    return result


def node_side(lines) -> dict:
    """
    Read what the node's own log says of each answer.

    Prompt arrival to answer published, the node's own share of it, and the decode speed the worker
    saw (free of the DDS path to the asking process).
    """
    import re
    totals, own, decode = [], [], []
    for line in lines:
        match = re.search(r'node ([0-9.]+) ms of ([0-9.]+) ms', line)
        speed = re.search(r'new tokens, ([0-9.]+) tok/s', line)
        if match and speed:
            own.append(float(match.group(1)) / 1000)
            totals.append(float(match.group(2)) / 1000)
            decode.append(float(speed.group(1)))
    if not totals:
        return {}
    return {'node_side_total_s': summarise(totals), 'node_own_s': summarise(own),
            'worker_decode_tok_s': summarise(decode)}


ECHO_NODE = """
import rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node('echo')
answer = node.create_publisher(String, 'answer', 1000)
node.create_subscription(String, 'prompt', lambda m: answer.publish(String(data=m.data)), 1000)
try:
    rclpy.spin(node)
except BaseException:
    pass
"""


def dds_round_trips(count: int = 50) -> dict:
    """
    Time prompt -> answer round trips through a bare rclpy echo node.

    That is the DDS share of the node's time.
    """
    from ros_harness import RosPeer, isolate_ros_domain, wait_until
    isolate_ros_domain()
    peer = RosPeer()
    echo = subprocess.Popen([sys.executable, '-c', ECHO_NODE])
    times = []
    try:
        answer_topic = peer.node.resolve_topic_name('answer')
        assert wait_until(lambda: peer.prompt_pub.get_subscription_count() > 0
                          and peer.node.count_publishers(answer_topic) > 0, 60)
        for index in range(count):
            with peer.changed:
                peer.answers.clear()
            start = time.perf_counter()
            peer.ask(f'ping {index}')
            assert peer.wait_for(lambda: peer.answers, 10), 'echo lost'
            times.append(time.perf_counter() - start)
            time.sleep(0.05)
    finally:
        echo.terminate()
        echo.wait(10)
        peer.close()
    return {key: value * 1000 for key, value in summarise(times).items() if key != 'n'}


# -- functional checks on CUDA --------------------------------------------------------------------

def cuda_checks(args) -> dict:
    import signal
    from phi3v_ros.engine.engine import EngineConfig
    from phi3v_ros.engine.engine_client import EngineClient
    from phi3v_ros.engine.generation import GenerationSettings, Request, StopReason
    client = EngineClient(EngineConfig(model_path=args.model, provider=args.provider), warmup=True,
                          restart_backoff_s=(0.1, 1.0))
    client.start()
    checks = {}
    try:
        assert client.wait_ready(600)
        checks['provider'] = client.info.get('provider')
        reply = Reply()
        client.submit(Request(prompt=PROMPT, images=(frame(),),
                              settings=GenerationSettings(max_new_tokens=64)),
                      on_result=reply.on_result, on_piece=reply.on_piece)
        result = reply.wait(120)
        checks['stream_joined_equals_answer'] = result.ok and ''.join(reply.pieces) == result.text
        reply = Reply()
        client.submit(Request(prompt=PROMPT, images=(frame(),),
                              settings=GenerationSettings(max_new_tokens=2000)),
                      on_result=reply.on_result,
                      on_piece=lambda piece: (reply.on_piece(piece),
                                              len(reply.pieces) == 5 and client.cancel()))
        result = reply.wait(120)
        checks['cancel_mid_stream'] = (result.stop_reason == StopReason.CANCELLED
                                       and result.generated_tokens < 2000)
        checks['tokens_before_cancel_took_effect'] = result.generated_tokens
        reply = Reply()
        client.submit(Request(prompt=PROMPT, images=(frame(),),
                              settings=GenerationSettings(max_new_tokens=2000)),
                      on_result=reply.on_result, on_piece=reply.on_piece)
        while not reply.pieces:
            time.sleep(0.001)
        os.kill(client.pid, signal.SIGKILL)
        killed = time.perf_counter()
        result = reply.wait(10)
        checks['killed_request_error_within_s'] = round(time.perf_counter() - killed, 3)
        checks['killed_request_is_error'] = result.stop_reason == StopReason.ERROR
        restart = time.perf_counter()
        assert client.wait_ready(600)
        checks['restart_to_ready_s'] = round(time.perf_counter() - restart, 1)
        reply = Reply()
        client.submit(Request(prompt=PROMPT, images=(frame(),),
                              settings=GenerationSettings(max_new_tokens=16)),
                      on_result=reply.on_result, on_piece=reply.on_piece)
        checks['answer_after_restart'] = reply.wait(120).ok
    finally:
        client.close()
    return checks


class Reply:
    """One request's streamed pieces and result (the tests' helper of that name, minus pytest)."""

    def __init__(self):
        self.pieces, self.result, self.done = [], None, threading.Event()

    def on_piece(self, piece):
        self.pieces.append(piece)

    def on_result(self, result):
        self.result = result
        self.done.set()

    def wait(self, timeout):
        assert self.done.wait(timeout), 'no result in time'
        return self.result


def gpu_name() -> str:
    try:
        return subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
                               '--format=csv,noheader'], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return 'no nvidia-smi'


def table(results) -> str:
    rows = [('configuration', 'TTFT ms', 'decode tok/s', 'total s (256 tok)', 'max_length',
             'peak GPU MiB')]
    for name in ('raw', 'engine_graph_off', 'engine_graph_on', 'node_graph_off', 'node_graph_on'):
        r = results.get(name)
        if not r or 'error' in r:
            rows.append((name, 'error', '', '', '', ''))
            continue
        rows.append((name, f'{r["ttft_s"]["median"] * 1000:.1f}',
                     f'{r["decode_tok_s"]["median"]:.0f}', f'{r["total_s"]["median"]:.3f}',
                     str(r.get('max_length', '')), str(r.get('peak_gpu_mib', ''))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(row, widths))
                     for row in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True)
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'gpu', 'results.json'))
    parser.add_argument('--provider', default='cuda')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--new-tokens', type=int, default=256)
    parser.add_argument('--child', choices=('raw', 'engine'))
    parser.add_argument('--cuda-graph', action='store_true')
    parser.add_argument('--only', default='raw,engine,node,checks')
    parser.add_argument('--no-memory', action='store_true',
                        help='no nvidia-smi sampling (timing only)')
    args = parser.parse_args(argv)
    GpuMemory.enabled = not args.no_memory
    if args.child:
        print(json.dumps(child_raw(args) if args.child == 'raw' else child_engine(args)))
        return 0
    only = args.only.split(',')
    results = {'device': gpu_name(), 'new_tokens': args.new_tokens, 'repeats': args.repeats,
               'frame': '640x480', 'date': time.strftime('%Y-%m-%d')}
    if 'raw' in only:
        results['raw'] = run_child('raw', args)
    if 'engine' in only:
        results['engine_graph_off'] = run_child('engine', args, cuda_graph=False)
        results['engine_graph_on'] = run_child('engine', args, cuda_graph=True)
    if 'node' in only:
        for graph in (False, True):
            try:
                results[f'node_graph_{"on" if graph else "off"}'] = node_runs(args, graph)
            except Exception as exc:  # noqa: BLE001 - keep the other measurements
                results[f'node_graph_{"on" if graph else "off"}'] = {'error': repr(exc)}
    if 'dds' in only:
        results['dds_round_trip_ms'] = dds_round_trips()
    if 'checks' in only:
        try:
            results['cuda_checks'] = cuda_checks(args)
        except Exception as exc:  # noqa: BLE001
            results['cuda_checks'] = {'error': repr(exc)}
    derive(results)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)
    print(results['device'])
    print(table(results))
    print(json.dumps({k: v for k, v in results.items()
                      if k.startswith(('ratio', 'same', 'kv', 'memory', 'cuda_checks', 'common'))},
                     indent=1))
    return 0


def common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def agreement(texts_a, texts_b) -> float:
    """
    Return the mean length of the common prefix of two sets of answers (characters).

    Pairs are of distinct runs.
    """
    pairs = [(a, b) for i, a in enumerate(texts_a) for j, b in enumerate(texts_b)
             if texts_a is not texts_b or i < j]
    return statistics.mean(common_prefix(a, b) for a, b in pairs) if pairs else 0.0


def derive(results) -> None:
    def med(name, key):
        r = results.get(name) or {}
        return (r.get(key) or {}).get('median')
    raw = results.get('raw', {})
    off = results.get('engine_graph_off', {})
    on = results.get('engine_graph_on', {})
    if 'text' in off and 'text' in on:
        results['same_greedy_output_graph_on_vs_off'] = off['text'] == on['text']
        # Greedy decoding of a random-weight model sits on near-ties, and CUDA kernels are not
        # bitwise repeatable: compare how far answers agree across configurations with how far they
        # agree across runs of one configuration.
        results['common_prefix_chars'] = {
            'graph_off_vs_graph_off': agreement(off['texts'], off['texts']),
            'graph_on_vs_graph_on': agreement(on['texts'], on['texts']),
            'graph_off_vs_graph_on': agreement(off['texts'], on['texts']),
            'answer_chars': len(off['text'])}
    if 'text' in raw and 'text' in off:
        results['same_greedy_output_raw_vs_engine'] = raw['text'] == off['text']
    for graph in ('off', 'on'):
        node_total = med(f'node_graph_{graph}', 'total_s')
        engine_total = med(f'engine_graph_{graph}', 'total_s')
        if node_total and engine_total:
            results[f'ratio_node_over_engine_graph_{graph}'] = node_total / engine_total
        node_side_total = med(f'node_graph_{graph}', 'node_side_total_s')
        if node_side_total and engine_total:
            results[f'ratio_node_side_over_engine_graph_{graph}'] = node_side_total / engine_total
        node_decode = med(f'node_graph_{graph}', 'decode_tok_s')
        raw_decode = med('raw', 'decode_tok_s')
        if node_decode and raw_decode:
            results[f'ratio_node_decode_over_raw_graph_{graph}'] = node_decode / raw_decode
        worker_decode = med(f'node_graph_{graph}', 'worker_decode_tok_s')
        if worker_decode and raw_decode:
            ratio = worker_decode / raw_decode
            results[f'ratio_node_worker_decode_over_raw_graph_{graph}'] = ratio
    if raw.get('peak_gpu_mib') and off.get('peak_gpu_mib'):
        results['memory_saved_mib_vs_7680'] = raw['peak_gpu_mib'] - off['peak_gpu_mib']
    if off.get('max_length'):
        saved = (RAW_MAX_LENGTH - off['max_length']) * 384 * 1024
        results['kv_bytes_saved_vs_7680_real_fp16'] = saved


if __name__ == '__main__':
    sys.exit(main())
