"""(3) Frame ingestion: CPU of the node receiving a camera stream with no prompts, against a bare subscriber.

One camera (phi3v_ros synthetic_camera, best effort like camera drivers) publishes 1920x1080 bgr8 at
30 Hz; the node (model loaded, worker idle) and the bare rclpy subscriber (bench/bare_subscriber.py)
receive the same stream at the same time. Over the same window, CPU seconds of each process are read
(the node's process only: the worker is reported apart) and the frames each received are counted (a
best-effort reader drops frames when it is late, so CPU per received frame is reported too).

The allocator matters as much as the code: rclpy allocates two 6 MiB buffers per 1080p frame, and
glibc serves a block that size with a fresh mmap (1,500 page faults, zeroed pages) unless its dynamic
mmap threshold has been raised above 6 MiB by an earlier free of a larger block. In the node (numpy,
OpenCV, onnxruntime loaded) it has been; in a bare script it has not, so the bare subscriber takes ~1.2
million page faults in 10 s and about 2.5 times the CPU. Comparing that would flatter the node, so the
ratio is measured twice: with the default environment, and with the same fixed malloc settings for both
processes (ALLOCATOR_NEUTRAL: 6 MiB blocks from the heap, no trimming), which compares their own work.
"""
from __future__ import annotations

import sys
import time
from typing import Dict, Optional

from bench.common import LoggedProcess, NodeProcess, Peer, entry_point, minor_faults, process_cpu_s


ALLOCATOR_NEUTRAL = {'GLIBC_TUNABLES': 'glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=134217728'}


def measure(model_path: str, duration_s: float = 20.0, width: int = 1920, height: int = 1080,
            rate_hz: float = 30.0, settle_s: float = 3.0, env: Optional[Dict[str, str]] = None
            ) -> Dict[str, object]:
    """env: extra environment for the node and the bare subscriber alike (e.g. ALLOCATOR_NEUTRAL)."""
    node = NodeProcess({'model_path': model_path, 'provider': 'cpu', 'diagnostics_period': 1.0}, env=env)
    bare = LoggedProcess([sys.executable, '-m', 'bench.bare_subscriber'], env=env)
    peer = camera = None
    try:
        peer = Peer('bench_ingestion_peer')
        peer.wait_ready()
        worker_pid = int(peer.diagnostics['worker_pid'])
        bare.wait_for_line(r'frames 0', 30.0)
        time.sleep(settle_s)

        def snapshot():
            return {'time': time.monotonic(), 'node_cpu': process_cpu_s(node.pid),
                    'bare_cpu': process_cpu_s(bare.pid), 'worker_cpu': process_cpu_s(worker_pid),
                    'node_page_faults': minor_faults(node.pid), 'bare_page_faults': minor_faults(bare.pid),
                    'node_frames': int(peer.diagnostics.get('frames_received') or 0),
                    'bare_frames': _last_count(bare)}
        # The window: from before the camera starts to after it stopped and both reported their final
        # frame counts, so that the counts are exact; both readers sit idle for the same few seconds.
        before = snapshot()
        camera = LoggedProcess(entry_point('synthetic_camera', 'phi3v_ros.tools.synthetic_camera') + [
            '--width', str(width), '--height', str(height), '--rate', str(rate_hz), '--encoding', 'bgr8',
            '--best-effort'])
        camera.wait_for_line('publishing', 30.0)
        started = time.monotonic()
        time.sleep(duration_s)
        camera_cpu = process_cpu_s(camera.pid)
        camera.stop()
        streamed = time.monotonic() - started
        time.sleep(1.5)
        seen = peer.diagnostics_seen
        peer.wait_for(lambda: peer.diagnostics_seen > seen, 3.0)
        count = len(bare.lines)
        bare.wait_for_line(r'frames \d+', 3.0, start=count)
        after = snapshot()
    finally:
        for process in (camera, bare):
            if process is not None:
                process.stop()
        if peer is not None:
            peer.close()
        node.stop()
    delta = {k: after[k] - before[k] for k in before}
    seconds = delta['time']
    delta['camera_cpu'] = camera_cpu
    node_per_frame = delta['node_cpu'] / max(1, delta['node_frames'])
    bare_per_frame = delta['bare_cpu'] / max(1, delta['bare_frames'])
    return {
        'stream': f'{width}x{height} bgr8 at {rate_hz:g} Hz, best effort', 'environment': env or 'default',
        'window_s': round(seconds, 2),
        'streaming_s': round(streamed, 2), 'frames_published_approx': int(round(streamed * rate_hz)),
        'node_frames': delta['node_frames'], 'bare_frames': delta['bare_frames'],
        'node_cpu_s': round(delta['node_cpu'], 3), 'bare_cpu_s': round(delta['bare_cpu'], 3),
        'worker_cpu_s': round(delta['worker_cpu'], 3), 'camera_cpu_s': round(delta['camera_cpu'], 3),
        'node_page_faults': delta['node_page_faults'], 'bare_page_faults': delta['bare_page_faults'],
        'node_cpu_percent_while_streaming': round(100 * delta['node_cpu'] / streamed, 1),
        'bare_cpu_percent_while_streaming': round(100 * delta['bare_cpu'] / streamed, 1),
        'cpu_ratio': round(delta['node_cpu'] / delta['bare_cpu'], 3) if delta['bare_cpu'] > 0 else None,
        'cpu_per_frame_ms_node': round(node_per_frame * 1e3, 3),
        'cpu_per_frame_ms_bare': round(bare_per_frame * 1e3, 3),
        'cpu_per_frame_ratio': round(node_per_frame / bare_per_frame, 3) if bare_per_frame > 0 else None,
    }


def _last_count(process: LoggedProcess) -> int:
    for line in reversed(process.lines):
        if line.startswith('frames '):
            return int(line.split()[1])
    return 0
