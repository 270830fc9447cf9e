"""
Memory of the managed node over lifecycle cycles: is it really given back at cleanup?

    python -m bench.lifecycle_memory [--cycles 5] [--model DIR --provider cuda] [--out FILE]

Starts managed_vision_qa_node (its own process, on a ROS domain of its own) and, for each cycle,
configures and activates it, has it answer one question about a 320x240 frame, deactivates and
cleans it up. Before the first configure and after each step it records the resident memory of
the node's process tree (the node and its worker, psutil) and, where nvidia-smi is there, the GPU
memory of those processes. Prints a table and writes every number to --out (JSON), with a verdict:
`flat` when the memory after cleanup, and when active, grew from the first cycle to the last by
no more than --max-growth-mb (or 3 % of it, where that is more: each cycle's worker is a new
process, whose resident size varies a little).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from bench.common import entry_point, merge_results
from phi3v_ros.client.vision_qa_client import VisionQAClient
from phi3v_ros.tools.ros_domain import isolate_ros_domain
import psutil


def tree(pid: int) -> List[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def rss_mb(pid: int) -> float:
    total = 0
    for process in tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2 ** 20, 1)


def gpu_mb(pid: int) -> Optional[float]:
    """GPU memory used by the tree's processes (nvidia-smi), None without nvidia-smi."""
    if shutil.which('nvidia-smi') is None:
        return None
    pids = {process.pid for process in tree(pid)}
    out = subprocess.run(['nvidia-smi', '--query-compute-apps=pid,used_memory',
                          '--format=csv,noheader,nounits'], capture_output=True, text=True,
                         timeout=30).stdout
    used = 0.0
    for line in out.splitlines():
        parts = [part.strip() for part in line.split(',')]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids:
            used += float(parts[1])
    return used


class Lifecycle:
    def __init__(self, client: VisionQAClient, namespace: str = '') -> None:
        from lifecycle_msgs.srv import ChangeState
        self.client = client
        self.change = client.node.create_client(ChangeState, f'{namespace}/vision_qa/change_state')

    def transition(self, name: str) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        if not self.change.wait_for_service(timeout_sec=60):
            raise RuntimeError('no lifecycle service')
        future = self.change.call_async(ChangeState.Request(
            transition=Transition(id=getattr(Transition, f'TRANSITION_{name.upper()}'))))
        deadline = time.monotonic() + 600
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f'{name}: no answer')
            time.sleep(0.01)
        if not future.result().success:
            raise RuntimeError(f'{name} failed')


def measure(model: str, provider: str, cycles: int, settle_s: float) -> Dict[str, object]:
    from bench.preprocessing import camera_frame
    domain = isolate_ros_domain()
    node = subprocess.Popen(entry_point('managed_vision_qa_node', 'phi3v_ros.node.managed_node')
                            + ['--ros-args', '-p', f'model_path:={model}', '-p',
                               f'provider:={provider}', '-p', 'max_new_tokens:=32'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    client = VisionQAClient()
    rows = []

    def sample(step: str, cycle: int) -> None:
        time.sleep(settle_s)      # let freed pages go back and allocators settle
        rows.append({'cycle': cycle, 'step': step, 'tree_rss_mb': rss_mb(node.pid),
                     'gpu_mb': gpu_mb(node.pid), 'processes': len(tree(node.pid))})
        print(json.dumps(rows[-1]), flush=True)

    try:
        lifecycle = Lifecycle(client)
        publisher = _frame_publisher(client)
        # 320x240: one frame fits Fast DDS's default 512 KiB shared-memory segment (a larger one
        # is mostly lost to a best-effort reader on the same machine; README, Large frames)
        frame = camera_frame(240, 320)
        sample('before configure', 0)
        for cycle in range(1, cycles + 1):
            lifecycle.transition('configure')
            lifecycle.transition('activate')
            if not client.wait_for_node(60):
                raise RuntimeError('the node does not take requests')
            _publish(publisher, frame)
            answer = client.ask('What is in front of the robot?', timeout=120, max_image_age=0.0)
            if not answer.ok:
                raise RuntimeError(f'no answer: {answer.error}')
            sample('active, after an answer', cycle)
            lifecycle.transition('deactivate')
            lifecycle.transition('cleanup')
            sample('after cleanup', cycle)
        lifecycle.transition('unconfigured_shutdown')
        node.wait(30)
    finally:
        client.close()
        if node.poll() is None:
            os.killpg(node.pid, 9)
    return {'provider': provider, 'domain_id': domain, 'cycles': cycles, 'samples': rows,
            'node_exit_code': node.returncode}


def _frame_publisher(client):
    from sensor_msgs.msg import Image
    return client.node.create_publisher(Image, 'image', 10)


def _publish(publisher, frame) -> None:
    from sensor_msgs.msg import Image
    message = Image(height=frame.shape[0], width=frame.shape[1], encoding='rgb8',
                    step=frame.shape[1] * 3)
    message.data = frame.tobytes()
    deadline = time.monotonic() + 30
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(20):     # best effort: a few frames, stamped now
        now = time.time()
        message.header.stamp.sec, message.header.stamp.nanosec = int(now), int(now % 1 * 1e9)
        publisher.publish(message)
        time.sleep(0.05)


def verdict(measured: Dict[str, object], max_growth_mb: float) -> Dict[str, object]:
    samples = measured['samples']
    out = {}
    for step in ('active, after an answer', 'after cleanup'):
        for key in ('tree_rss_mb', 'gpu_mb'):
            values = [s[key] for s in samples if s['step'] == step and s[key] is not None]
            if values:
                out[f'{step}: {key}'] = {'first': values[0], 'last': values[-1],
                                         'growth': round(values[-1] - values[0], 1),
                                         'max_minus_first': round(max(values) - values[0], 1),
                                         'allowed': round(max(max_growth_mb, 0.03 * values[0]),
                                                          1)}
    before = samples[0]['tree_rss_mb']
    cleaned = [s['tree_rss_mb'] for s in samples if s['step'] == 'after cleanup']
    # growth from the first cycle to the last: each cycle's worker is a new process, whose
    # resident size varies by a few percent around its level (pages touched, allocator)
    flat = all(v['growth'] <= v['allowed'] for v in out.values())
    return {'checks': out, 'before_configure_mb': before,
            'cleanup_gives_back_mb': round(max(s['tree_rss_mb'] for s in samples
                                               if s['step'].startswith('active')) - cleaned[-1],
                                           1) if cleaned else None,
            'verdict': 'flat' if flat else 'growing', 'max_growth_mb': max_growth_mb}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cycles', type=int, default=5)
    parser.add_argument('--model', help='model folder (default: a tiny model made here)')
    parser.add_argument('--provider', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--settle-s', type=float, default=2.0)
    parser.add_argument('--max-growth-mb', type=float, default=20.0)
    parser.add_argument('--out', default='bench/results.json')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from phi3v_ros.tools.make_tiny_model import make_tiny_model
            model = str(make_tiny_model(os.path.join(scratch, 'tiny'), seed=0, layout='auto'))
        measured = measure(model, args.provider, args.cycles, args.settle_s)
    measured['verdict'] = verdict(measured, args.max_growth_mb)
    merge_results(args.out, lambda results: results.setdefault('lifecycle_memory', {}).update(
        {args.provider: measured}))
    print('| cycle | step | node + worker RSS (MB) | GPU (MB) | processes |')
    print('|---|---|---|---|---|')
    for s in measured['samples']:
        print(f'| {s["cycle"]} | {s["step"]} | {s["tree_rss_mb"]} | '
              f'{"" if s["gpu_mb"] is None else s["gpu_mb"]} | {s["processes"]} |')
    print(json.dumps(measured['verdict'], indent=1))
    return 0 if measured['verdict']['verdict'] == 'flat' else 1


if __name__ == '__main__':
    sys.exit(main())
