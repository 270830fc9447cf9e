"""Soak test: run vision_qa_node for a long time with a camera stream and a prompt every few seconds.

Not part of the CI run. It starts the node and a synthetic camera itself (each as its own process, on
their own ROS domain, localhost only), asks a question every --prompt-interval seconds, and every
--sample-interval seconds records the resident memory (RSS) of the node and of its worker, the
number of threads and open files of the node, the shared-memory blocks in /dev/shm, and the
replies and latencies since the last sample. At the end it prints a table per time window and writes
everything to --out (JSON), with a verdict on memory growth:

    python -m bench.soak --duration 1800 --out bench/soak_results.json          # 30 minutes
    python -m bench.soak --duration 120 --prompt-interval 1 --out /tmp/soak.json  # a quick look
    python -m bench.soak --duration 600 --param recycle_after_requests:=100      # any node parameter

Without --model it generates the tiny random-weight model (make_tiny_model) in a temporary folder.
The memory verdict compares the median RSS of the first and last fifth of the run (after --warmup
seconds) and fits a line through all samples after warm-up: `flat` when neither grows by more than
--max-growth-mb (default 20 MB over the run).

With --faults the same node runs while a fault driver kills and stalls its worker, floods ~/cancel,
calls ~/reset, changes parameters, publishes bad frames and bursts of prompts (bench/faults/):

    python -m bench.soak --faults --duration 120 --seed 1 --out /tmp/soak_faults.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

from bench.process_watch import (memory_verdict, percentile, python_module, rounded, rss_mb,
                                 shm_blocks, stop, worker_of)
from phi3v_ros.tools.ros_domain import isolate_ros_domain
import psutil

ERROR_PREFIX = 'ERROR: '


class Client:
    """The soak's ROS side: publishes prompts, matches answers to them in order, reads diagnostics."""

    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from phi3v_ros.client.spinning import SpinningNode
        from std_msgs.msg import String

        self._ros = SpinningNode('soak_client')
        self.node = self._ros.node
        self._String = String
        self.prompt_pub = self.node.create_publisher(String, 'prompt', 10)
        self.node.create_subscription(String, 'answer', self._on_answer, 100)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.lock = threading.Lock()
        self.pending: 'collections.deque[float]' = collections.deque()   # send times, in order
        self.replies: List[tuple] = []      # (time answered, latency s, ok, text)
        self.diagnostics: Dict[str, str] = {}
        self._ros.start()

    def _on_answer(self, message) -> None:
        now = time.monotonic()
        with self.lock:
            sent = self.pending.popleft() if self.pending else now
            self.replies.append((now, now - sent, not message.data.startswith(ERROR_PREFIX),
                                 message.data[:200]))

    def _on_diagnostics(self, message) -> None:
        values = {pair.key: pair.value for status in message.status for pair in status.values}
        with self.lock:
            self.diagnostics = values

    def connected(self) -> bool:
        return (self.prompt_pub.get_subscription_count() > 0
                and self.node.count_publishers(self.node.resolve_topic_name('answer')) > 0)

    def ready(self) -> bool:
        with self.lock:
            return self.diagnostics.get('engine_state') in ('ready', 'generating')

    def ask(self, text: str) -> None:
        with self.lock:
            self.pending.append(time.monotonic())
        self.prompt_pub.publish(self._String(data=text))

    def close(self) -> None:
        self._ros.close()


def window_rows(samples: List[dict], replies: List[tuple], start: float, window_s: float) -> List[dict]:
    rows = []
    end = max([s['t_s'] for s in samples] + [0.0])
    t = 0.0
    while t < end:
        in_window = [r for r in replies if t <= r[0] - start < t + window_s]
        latencies = [r[1] for r in in_window if r[2]]
        last_sample = [s for s in samples if s['t_s'] < t + window_s][-1:] or [{}]
        rows.append({
            'from_s': round(t), 'to_s': round(min(t + window_s, end)),
            'replies': len(in_window), 'answers': sum(1 for r in in_window if r[2]),
            'errors': sum(1 for r in in_window if not r[2]),
            'p50_s': rounded(percentile(latencies, 50)), 'p95_s': rounded(percentile(latencies, 95)),
            'p99_s': rounded(percentile(latencies, 99)), 'max_s': rounded(max(latencies, default=None)),
            'node_rss_mb': last_sample[0].get('node_rss_mb'),
            'worker_rss_mb': last_sample[0].get('worker_rss_mb'),
        })
        t += window_s
    return rows


def print_table(rows: List[dict]) -> None:
    header = ('window', 'replies', 'answers', 'errors', 'p50 s', 'p95 s', 'p99 s', 'max s',
              'node MB', 'worker MB')
    print(' | '.join(f'{h:>10}' for h in header))
    for row in rows:
        cells = (f'{row["from_s"]}-{row["to_s"]}', row['replies'], row['answers'], row['errors'],
                 row['p50_s'], row['p95_s'], row['p99_s'], row['max_s'], row['node_rss_mb'],
                 row['worker_rss_mb'])
        print(' | '.join(f'{"-" if c is None else c!s:>10}' for c in cells))


def parse_size(text: str):
    width, height = text.lower().split('x')
    return int(width), int(height)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='soak', description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=1800.0, help='seconds (default 1800)')
    parser.add_argument('--prompt-interval', type=float, default=3.0, help='seconds between prompts')
    parser.add_argument('--frame-rate', type=float, default=15.0, help='camera frames per second')
    parser.add_argument('--size', type=parse_size, default=(640, 480), help='camera WIDTHxHEIGHT')
    parser.add_argument('--max-new-tokens', type=int, default=64)
    parser.add_argument('--sample-interval', type=float,
                        help='seconds between samples (default 10; 2 with --faults)')
    parser.add_argument('--window', type=float,
                        help='seconds per row of the table (default 300; 30 with --faults)')
    parser.add_argument('--warmup', type=float,
                        help='seconds left out of the memory verdict (allocators settle; '
                             'default 60; 30 with --faults)')
    parser.add_argument('--max-growth-mb', type=float, default=20.0)
    parser.add_argument('--model', help='model folder (default: a freshly generated tiny model)')
    parser.add_argument('--provider', default='cpu')
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter (repeatable)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID for the node, the camera and the client (localhost '
                             'only); default: a free one, as the tests take theirs '
                             '(phi3v_ros.tools.ros_domain)')
    parser.add_argument('--out', default='soak_results.json', help='JSON file to write')
    parser.add_argument('--log', help='node log file (default: next to --out)')
    from bench.faults import run as fault_mode
    fault_mode.add_arguments(parser)
    args = parser.parse_args(argv)
    for name, plain, faults in (('sample_interval', 10.0, 2.0), ('window', 300.0, 30.0),
                                ('warmup', 60.0, 30.0)):
        if getattr(args, name) is None:
            setattr(args, name, faults if args.faults else plain)
    # the user's choice, else a domain no other run (test, benchmark, soak) holds or uses
    args.domain_id = isolate_ros_domain(args.domain_id)
    print(f'ROS domain {args.domain_id}', flush=True)
    if args.faults:
        return fault_mode.run(args)

    workdir = tempfile.mkdtemp(prefix='phi3v_soak_')
    model = args.model
    if model is None:
        from phi3v_ros.tools.make_tiny_model import make_tiny_model
        model = str(make_tiny_model(os.path.join(workdir, 'model'), seed=0))
    width, height = args.size
    parameters = {'model_path': model, 'provider': args.provider, 'max_new_tokens': args.max_new_tokens,
                  'max_queue': 8, 'image_wait_timeout': 2.0}
    node_args = python_module('phi3v_ros.node.vision_qa_node') + ['--ros-args']
    for name, value in parameters.items():
        node_args += ['-p', f'{name}:={value}']
    for extra in args.param:
        node_args += ['-p', extra]
    log_path = args.log or os.path.splitext(args.out)[0] + '_node.log'
    shm_before = shm_blocks()

    log_file = open(log_path, 'w', encoding='utf-8')
    node_proc = subprocess.Popen(node_args, stdout=log_file, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    camera_proc = subprocess.Popen(
        python_module('phi3v_ros.tools.synthetic_camera')
        + ['--width', str(width), '--height', str(height), '--rate', str(args.frame_rate)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    client = Client()
    node = psutil.Process(node_proc.pid)
    samples: List[dict] = []
    worker_pids = []
    result: dict = {}
    try:
        deadline = time.monotonic() + 120
        while not (client.connected() and client.ready()):
            if time.monotonic() > deadline or node_proc.poll() is not None:
                raise SystemExit(f'the node did not become ready; see {log_path}')
            time.sleep(0.1)
        print(f'node ready (pid {node_proc.pid}, domain {args.domain_id}); soaking for {args.duration:g} s: '
              f'{width}x{height} at {args.frame_rate:g} Hz, a prompt every {args.prompt_interval:g} s',
              flush=True)
        start = time.monotonic()
        next_prompt = start
        next_sample = start
        asked = 0
        cpu_prev = node.cpu_times()
        while True:
            now = time.monotonic()
            if now - start >= args.duration:
                break
            if node_proc.poll() is not None:
                raise SystemExit(f'the node exited with {node_proc.returncode}; see {log_path}')
            if now >= next_prompt:
                asked += 1
                client.ask(f'Question {asked}: what is in front of the robot?')
                next_prompt += args.prompt_interval
            if now >= next_sample:
                worker = worker_of(node)
                if worker is not None and (not worker_pids or worker_pids[-1] != worker.pid):
                    worker_pids.append(worker.pid)
                cpu = node.cpu_times()
                with client.lock:
                    diagnostics = dict(client.diagnostics)
                    replies = len(client.replies)
                    errors = sum(1 for r in client.replies if not r[2])
                sample = {
                    't_s': round(now - start, 1), 'node_rss_mb': rounded(rss_mb(node), 1),
                    'worker_rss_mb': rounded(rss_mb(worker), 1),
                    'worker_pid': None if worker is None else worker.pid,
                    'node_threads': node.num_threads(), 'node_fds': node.num_fds(),
                    'node_cpu_s': round(cpu.user + cpu.system - cpu_prev.user - cpu_prev.system, 2),
                    'shm_blocks': len(shm_blocks()), 'asked': asked, 'replies': replies,
                    'errors': errors, 'frames_received': diagnostics.get('frames_received'),
                    'prompts_answered': diagnostics.get('prompts_answered'),
                    'worker_restarts': diagnostics.get('worker_restarts'),
                }
                cpu_prev = cpu
                samples.append(sample)
                print(json.dumps(sample), flush=True)
                next_sample += args.sample_interval
            time.sleep(max(0.0, min(next_prompt, next_sample) - time.monotonic()))
        # the last prompts get their replies
        drain = time.monotonic() + 30
        while time.monotonic() < drain:
            with client.lock:
                if len(client.replies) >= asked:
                    break
            time.sleep(0.05)
        time.sleep(1.0)   # a second reply to any prompt would show up now
        with client.lock:
            replies = list(client.replies)
            diagnostics = dict(client.diagnostics)
        latencies = [r[1] for r in replies if r[2]]
        errors = [r[3] for r in replies if not r[2]]
        result = {
            'machine': {'cpu': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
                        'platform': platform.platform(), 'python': platform.python_version()},
            'settings': {'duration_s': args.duration, 'domain_id': args.domain_id,
                         'prompt_interval_s': args.prompt_interval,
                         'frame_rate_hz': args.frame_rate, 'size': f'{width}x{height}',
                         'max_new_tokens': args.max_new_tokens, 'provider': args.provider,
                         'model': 'tiny random-weight phi3v (make_tiny_model)' if args.model is None
                         else args.model, 'extra_parameters': args.param},
            'prompts_sent': asked, 'replies': len(replies), 'answers': len(latencies),
            'error_replies': len(errors), 'error_examples': sorted(set(errors))[:5],
            'every_prompt_one_reply': len(replies) == asked,
            'latency_s': {'p50': rounded(percentile(latencies, 50)), 'p90': rounded(percentile(latencies, 90)),
                          'p99': rounded(percentile(latencies, 99)), 'max': rounded(max(latencies, default=None))},
            'node_diagnostics_at_end': {k: diagnostics.get(k) for k in (
                'prompts_received', 'prompts_answered', 'prompts_rejected', 'prompts_failed',
                'worker_restarts', 'frames_received')},
            'worker_pids': worker_pids,
            'memory': {'node': memory_verdict(samples, 'node_rss_mb', args.warmup, args.max_growth_mb),
                       'worker': memory_verdict(samples, 'worker_rss_mb', args.warmup,
                                                args.max_growth_mb)},
            'node_threads': {'min': min(s['node_threads'] for s in samples),
                             'max': max(s['node_threads'] for s in samples)} if samples else {},
            'node_fds': {'min': min(s['node_fds'] for s in samples),
                         'max': max(s['node_fds'] for s in samples)} if samples else {},
            'shm_blocks_max': max((s['shm_blocks'] for s in samples), default=0),
            'windows': window_rows(samples, replies, start, args.window),
            'samples': samples,
        }
    finally:
        client.close()
        stop(camera_proc)
        node_rc = stop(node_proc)
        log_file.close()
        time.sleep(0.5)
        leftover = sorted(set(shm_blocks()) - set(shm_before))
        if result:
            result['node_exit_code'] = node_rc
            result['shm_blocks_left_after_stop'] = leftover
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(result['windows'])
    print(json.dumps({k: result[k] for k in ('prompts_sent', 'replies', 'answers', 'error_replies',
                                            'every_prompt_one_reply', 'latency_s', 'memory',
                                            'node_exit_code', 'shm_blocks_left_after_stop')}, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=1)
        f.write('\n')
    ok = (result['every_prompt_one_reply'] and result['memory']['node'].get('verdict') == 'flat'
          and result['memory']['worker'].get('verdict') == 'flat' and node_rc == 0 and not leftover)
    print(f'soak {"passed" if ok else "FAILED"}; results in {args.out}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
