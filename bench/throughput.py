"""(6) Throughput under load: prompts arrive faster than they can be served, for each busy_policy.

Prompts are published at a fixed rate for a fixed time; every prompt gets exactly one reply (an answer
or an ERROR: sentence). Answers per minute count the answers (not the ERROR replies), in steady
state: between the first and the last answer that arrived within the window. The ceiling is what the engine alone does back to back: 60 / (direct time per
answer), measured the same way in the direct process.
"""
from __future__ import annotations

import time
from typing import Dict

from bench.common import NodeProcess, Peer, summary
from bench.overhead import ANSWER_LOG, PROMPT


def flood(node: NodeProcess, peer: Peer, policy: str, rate_hz: float, duration_s: float,
          max_queue: int) -> Dict[str, object]:
    peer.set_parameters(busy_policy=policy, max_queue=max_queue)
    with peer.changed:
        peer.answers.clear()
        peer.pieces.clear()
    first_line = len(node.lines)
    start = time.monotonic()
    sent = 0
    while True:
        due = start + sent / rate_hz
        if due >= start + duration_s:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        peer.ask(PROMPT)
        sent += 1
    end = start + duration_s
    if not peer.wait_for(lambda: len(peer.answers) >= sent, 60.0):
        raise RuntimeError(f'{len(peer.answers)} replies to {sent} prompts')
    replies = list(peer.answers)
    answered = [t for t, text in replies if not text.startswith('ERROR: ') and t <= end]
    errors: Dict[str, int] = {}
    for _, text in replies:
        if text.startswith('ERROR: '):
            kind = 'busy (rejected)' if 'busy:' in text else 'dropped' if 'dropped' in text else text[:60]
            errors[kind] = errors.get(kind, 0) + 1
    # The node's own account of each answer: prompt arrival -> answer published (queueing included).
    latencies = [float(m.group('node')) for m in map(ANSWER_LOG.search, node.lines[first_line:]) if m]
    return {'policy': policy, 'max_queue': max_queue, 'prompt_rate_hz': rate_hz, 'duration_s': duration_s,
            'prompts': sent, 'answers_in_window': len(answered),
            # steady state: between the first and the last answer of the window
            'answers_per_minute': (round((len(answered) - 1) * 60.0 / (answered[-1] - answered[0]), 1)
                                   if len(answered) > 1 else 0.0),
            'error_replies': errors, 'answer_latency_ms': summary(latencies, digits=1)}
