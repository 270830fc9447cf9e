"""(4) Responsiveness of the node's callbacks while a long generation runs, and while idle.

What can be measured, and how:
* image callback delay, inside the node: started with --log-level debug, the node logs for every frame
  the time from its header stamp (set by the camera just before publishing, time.time()) to the start
  of its image callback. Same clock, same machine, so this is transport + executor delay. The bare
  subscriber (bench/bare_subscriber.py --delays) measures the same on the same stream: the part of the
  delay that any Python subscriber pays.
* `~/reset` round trip, outside: a Trigger call from here; the service callback runs on the same
  executor thread as the image callback, so a busy executor shows here too. The bare subscriber offers
  the same empty service: its round trip under the same load is the floor any rclpy process gets.
* subscription echo round trip, outside: an empty prompt is refused from inside the prompt callback,
  at once (`ERROR: the prompt is empty.`): publish -> callback -> publish -> here. It measures the same
  executor through a subscription instead of a service.
Round trips measured from outside include this process's own scheduling; the idle rows give that floor.
The camera is phi3v_ros synthetic_camera at 640x480 bgr8, 30 Hz.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from typing import Dict, List

from bench.common import LoggedProcess, NodeProcess, Peer, entry_point, latency_summary

FRAME_DELAY = re.compile(r'header stamp to image callback ([-\d.]+) ms')


def _call(client, times: List[float]) -> None:
    from std_srvs.srv import Trigger
    start = time.monotonic()
    future = client.call_async(Trigger.Request())
    done = threading.Event()
    future.add_done_callback(lambda f: done.set())
    if done.wait(5.0):
        times.append(time.monotonic() - start)


def _probe(peer: Peer, bare_reset, duration_s: float, interval_s: float = 0.05) -> Dict[str, List[float]]:
    """Alternate ~/reset calls, the bare subscriber's reset and empty-prompt echoes for duration_s;
    round trips in seconds."""
    resets, bare_resets, echoes = [], [], []
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        _call(peer.reset_client, resets)
        time.sleep(interval_s / 3)
        _call(bare_reset, bare_resets)
        time.sleep(interval_s / 3)
        with peer.changed:
            count = len(peer.answers)
        start = time.monotonic()
        peer.ask('')
        if peer.wait_for(lambda: any(text == 'ERROR: the prompt is empty.' for _, text in peer.answers[count:]),
                         5.0):
            with peer.changed:
                arrived = next(t for t, text in peer.answers[count:] if text == 'ERROR: the prompt is empty.')
            echoes.append(arrived - start)
        time.sleep(interval_s / 3)
    return {'reset': resets, 'bare_reset': bare_resets, 'echo': echoes}


def _frame_delays(node: NodeProcess, bare: LoggedProcess, node_from: int, bare_from: int) -> Dict[str, list]:
    node_delays = [float(m.group(1)) / 1e3 for m in map(FRAME_DELAY.search, node.lines[node_from:]) if m]
    bare_delays = [float(line.split()[1]) / 1e3 for line in bare.lines[bare_from:] if line.startswith('delay ')]
    return {'node': node_delays, 'bare': bare_delays}


def measure(model_path: str, probe_s: float = 8.0, max_new_tokens: int = 30000,
            stream_interval: float = 0.02) -> Dict[str, object]:
    """model_path must have a long context (a generation of several seconds)."""
    node = NodeProcess({'model_path': model_path, 'provider': 'cpu', 'max_new_tokens': max_new_tokens,
                        'stream_interval': stream_interval,
                        'image_reliability': 'best_effort', 'allow_text_only': True,
                        'image_wait_timeout': 0.0}, log_level='debug')
    bare = LoggedProcess([sys.executable, '-m', 'bench.bare_subscriber', '--delays'])
    peer = camera = None
    try:
        peer = Peer('bench_responsiveness_peer', stream=False)
        peer.wait_ready()
        peer.reset_client.wait_for_service(10.0)
        from std_srvs.srv import Trigger
        bare_reset = peer.node.create_client(Trigger, '/bare_subscriber/reset')
        bare_reset.wait_for_service(10.0)
        camera = LoggedProcess(entry_point('synthetic_camera', 'phi3v_ros.tools.synthetic_camera') + [
            '--width', '640', '--height', '480', '--rate', '30', '--encoding', 'bgr8', '--best-effort'])
        node.wait_for_line(FRAME_DELAY.pattern, 30.0)
        bare.wait_for_line(r'delay ', 30.0)
        time.sleep(1.0)

        # idle: nothing generates
        node_from, bare_from = len(node.lines), len(bare.lines)
        idle = _probe(peer, bare_reset, probe_s)
        idle.update(_frame_delays(node, bare, node_from, bare_from))

        # busy: one long generation (a camera frame and a long max_new_tokens)
        with peer.changed:
            peer.answers.clear()
        generating_from = len(node.lines)
        peer.ask('Describe the image in great detail.')
        node.wait_for_line('engine generating', 30.0, start=generating_from)
        time.sleep(0.5)   # past the prefill: into the decode loop, where the pieces stream
        node_from, bare_from = len(node.lines), len(bare.lines)
        busy = _probe(peer, bare_reset, probe_s)
        busy.update(_frame_delays(node, bare, node_from, bare_from))
        still_generating = not any(not text.startswith('ERROR: the prompt') for _, text in peer.answers)
        cancel = peer.call(peer.cancel_client, peer.trigger_request())
    finally:
        for process in (camera, bare):
            if process is not None:
                process.stop()
        if peer is not None:
            peer.close()
        node.stop()
    return {
        'camera': '640x480 bgr8 at 30 Hz, best effort', 'probe_s': probe_s,
        'generation_still_running_at_end': still_generating, 'cancelled': bool(cancel.success),
        'idle': {'image_callback_delay_node': latency_summary(idle['node']),
                 'image_callback_delay_bare_subscriber': latency_summary(idle['bare']),
                 'reset_round_trip': latency_summary(idle['reset']),
                 'bare_reset_round_trip': latency_summary(idle['bare_reset']),
                 'echo_round_trip': latency_summary(idle['echo'])},
        'during_inference': {'image_callback_delay_node': latency_summary(busy['node']),
                             'image_callback_delay_bare_subscriber': latency_summary(busy['bare']),
                             'reset_round_trip': latency_summary(busy['reset']),
                             'bare_reset_round_trip': latency_summary(busy['bare_reset']),
                             'echo_round_trip': latency_summary(busy['echo'])},
    }
