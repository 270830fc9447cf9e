"""(1) overhead per question, (2) time to the first streamed piece, (5) memory and max_length.

Side by side, in rotating order: the same question on the same frame with the same settings is asked of
the engine called directly in its own process (bench/direct.py), of a second identical direct process
(the control), and of the node over ROS (prompt published here, answer received here).

Two processes running the same code on this 2-core VM differ by up to 10-20% for their whole life
(measured: two identical direct processes, 40 alternating pairs, twice: the first 11% and 17% slower;
three processes: 317-342 ms), so one node against one direct process says little. The measurement is
therefore made in rounds with fresh processes (node, worker, two direct processes), pooled; the baseline
is both direct processes, and the ratio of the second to the first (the control) is reported next to the
node's ratio: it is the resolution of the comparison.
The node's exact per-request costs (time outside its engine, its CPU during the question) come from its
log and /proc and do not depend on that.
"""
from __future__ import annotations

import re
import time
from typing import Dict, List

import cv2
import numpy as np

from bench.common import NodeProcess, Peer, peak_rss_bytes, process_cpu_s, summary, test_frame_bgr

PROMPT = 'Describe the image.'
KV_BYTES_PER_TOKEN_PHI3V = 384 * 1024        # 32 layers x (K + V) x 32 heads x 96 x 2 bytes (fp16)
OLD_FIXED_MAX_LENGTH = 7680                  # what the old example scripts set for every request

ANSWER_LOG = re.compile(
    r'prompt #(?P<id>\d+) answered in (?P<generate>[\d.]+) s \(first token (?P<ttft>[\d.]+) s, '
    r'(?P<prompt_tokens>\d+) prompt \+ (?P<tokens>\d+) new tokens, (?P<tps>[\d.]+) tok/s\).*; '
    r'node (?P<own>[-\d.]+) ms of (?P<node>[-\d.]+) ms: queue (?P<queue>[-\d.]+), wait (?P<wait>[-\d.]+), '
    r'convert (?P<convert>[-\d.]+), to_worker (?P<to_worker>[-\d.]+), handoff (?P<handoff>[-\d.]+), '
    r'reply (?P<reply>[-\d.]+), publish (?P<publish>[-\d.]+) ms, (?P<messages>\d+) stream messages')
STAGES = ('queue', 'wait', 'convert', 'to_worker', 'handoff', 'reply', 'publish')


def ask_node(node: NodeProcess, peer: Peer, prompt: str, worker_pid: int = 0,
             timeout: float = 60.0) -> Dict[str, object]:
    """One question through the node: times seen from outside plus the node's own account (its log)."""
    with peer.changed:
        peer.answers.clear()
        peer.pieces.clear()
    first_line = len(node.lines)
    cpu_before = process_cpu_s(node.pid), process_cpu_s(worker_pid) if worker_pid else 0.0
    sent = peer.ask(prompt)
    if not peer.wait_for(lambda: peer.answers, timeout):
        raise RuntimeError(f'no answer within {timeout} s')
    answered_at, text = peer.answers[0]
    if text.startswith('ERROR: '):
        raise RuntimeError(f'the node answered {text!r}')
    # answer/stream is a topic of its own: its last pieces may arrive just after the answer.
    peer.wait_for(lambda: ''.join(p for _, p in peer.pieces) == text, 2.0)
    with peer.changed:
        pieces = list(peer.pieces)
    match = node.wait_for_line(ANSWER_LOG.pattern, 10.0, start=first_line)
    cpu_after = process_cpu_s(node.pid), process_cpu_s(worker_pid) if worker_pid else 0.0
    log = {k: float(v) for k, v in match.groupdict().items()}
    return {'total_s': answered_at - sent, 'first_piece_s': pieces[0][0] - sent if pieces else float('nan'),
            'text': text, 'stream_equals_answer': ''.join(p for _, p in pieces) == text,
            'stream_messages_received': len(pieces), 'node_cpu_s': cpu_after[0] - cpu_before[0],
            'worker_cpu_s': cpu_after[1] - cpu_before[1], **log}


def ask_direct(direct, key: str, prompt: str, max_new_tokens: int) -> Dict[str, object]:
    before = process_cpu_s(direct.pid)
    result = direct.generate(key, prompt, max_new_tokens)
    result['cpu_s'] = process_cpu_s(direct.pid) - before
    return result


def collect_round(node: NodeProcess, peer: Peer, directs, height: int, width: int, repeats: int,
                  warmup: int, max_new_tokens: int, settle_s: float = 0.05) -> List[Dict[str, dict]]:
    """repeats triplets {'direct': ..., 'control': ..., 'node': ...} for one frame size, in rotating order.

    'control' is a second direct process, identical to the first: the direct/control ratio shows how
    much two processes running the same code differ on this machine (the resolution of the comparison).
    """
    bgr = test_frame_bgr(height, width)
    key = f'{width}x{height}'
    for direct in directs:
        direct.load_frame(key, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    peer.deliver_frame(bgr, 'bgr8')
    worker_pid = int(peer.diagnostics.get('worker_pid') or 0)
    sides = ['direct', 'control', 'node'][:len(directs) + 1] if len(directs) > 1 else ['direct', 'node']
    triplets = []
    for index in range(warmup + repeats):
        order = sides[index % len(sides):] + sides[:index % len(sides)]
        runs = {}
        for side in order:
            time.sleep(settle_s)
            if side == 'node':
                runs[side] = ask_node(node, peer, PROMPT, worker_pid)
            else:
                runs[side] = ask_direct(directs[0 if side == 'direct' else 1], key, PROMPT, max_new_tokens)
        if index >= warmup:
            triplets.append(runs)
    return triplets


def _ratio(numerator, denominator) -> float:
    return round(float(np.median(numerator) / np.median(denominator)), 4)


def summarize(frame: str, rounds: List[List[Dict[str, dict]]], max_new_tokens: int) -> Dict[str, object]:
    """Pool the triplets of every round; also give each round's own ratio (fresh processes each round)."""
    triplets = [t for r in rounds for t in r]
    n = [t['node'] for t in triplets]
    c = [t['control'] for t in triplets if 'control' in t]
    # The baseline is both direct processes of every round: more processes, less of one process's luck.
    d = [t['direct'] for t in triplets] + c
    ms = 1e3
    direct_total = np.array([r['total_s'] for r in d])
    node_total = np.array([r['total_s'] for r in n])
    direct_first = np.array([r['first_piece_s'] for r in d])
    node_first = np.array([r['first_piece_s'] for r in n])
    node_own = np.array([r['own'] for r in n]) / ms
    node_inside = np.array([r['node'] for r in n]) / ms    # prompt arrival -> answer published, in the node
    node_generate = np.array([r['generate'] for r in n])   # Engine.generate in the worker (its Result)
    node_engine_ttft = np.array([r['ttft'] for r in n])    # time to first token in the worker's engine
    direct_generate = np.array([r['engine_total_s'] for r in d])
    checks = {
        'tokens_direct': sorted({r['tokens'] for r in d + c}), 'tokens_node': sorted({int(r['tokens']) for r in n}),
        'texts_identical': all(t['direct']['text'] == t['node']['text'] and
                               t.get('control', t['direct'])['text'] == t['direct']['text'] for t in triplets),
        'stream_joined_equals_answer': all(r['stream_equals_answer'] for r in n),
    }
    breakdown = {f'{stage}_ms': summary([r[stage] for r in n]) for stage in STAGES}
    breakdown.update({
        'dds_prompt_and_answer_ms': summary((node_total - node_inside) * ms),
        'node_own_ms': summary(node_own * ms),
        # per request, exact: what the node adds around its own engine's generation
        'outside_generate_ms': summary((node_total - node_generate) * ms, digits=2),
        # the engine's own time in the worker against the direct process (two processes: noisy)
        'generate_slower_in_worker_ms_of_medians': round(float(
            (np.median(node_generate) - np.median(direct_generate)) * ms), 2),
        'stream_messages_per_answer': summary([r['messages'] for r in n], digits=1),
        # CPU per question: the node process (its share of the machine while the worker computes), the
        # worker, and the direct process doing the same generation
        'node_process_cpu_ms': summary([r['node_cpu_s'] * ms for r in n], digits=2),
        'worker_cpu_ms': summary([r['worker_cpu_s'] * ms for r in n], digits=1),
        'direct_process_cpu_ms': summary([r['cpu_s'] * ms for r in d], digits=1),
    })
    per_round = [{'overhead_ratio': _ratio([t['node']['total_s'] for t in r],
                                           [t[k]['total_s'] for t in r for k in ('direct', 'control') if k in t]),
                  'control_ratio': (_ratio([t['control']['total_s'] for t in r], [t['direct']['total_s'] for t in r])
                                    if 'control' in r[0] else None)} for r in rounds]
    out = {
        'frame': frame, 'rounds': len(rounds), 'questions_per_round': len(rounds[0]), 'max_new_tokens': max_new_tokens,
        'direct_total_ms': summary(direct_total * ms), 'node_total_ms': summary(node_total * ms),
        'overhead_ratio': _ratio(node_total, direct_total),
        'overhead_ratio_per_round': [r['overhead_ratio'] for r in per_round],
        'added_ms': round(float((np.median(node_total) - np.median(direct_total)) * ms), 2),
        'direct_first_piece_ms': summary(direct_first * ms),
        'direct_engine_ttft_ms': summary([r['engine_ttft_s'] * ms for r in d]),
        'node_first_piece_ms': summary(node_first * ms),
        # (2) per request: first piece received here - time to first token in the worker's engine
        'first_piece_added_ms': round(float(np.median(node_first - node_engine_ttft) * ms), 2),
        'first_piece_after_engine_first_token_ms': summary((node_first - node_engine_ttft) * ms, digits=2),
        'node_engine_ttft_ms': summary(node_engine_ttft * ms),
        # across processes, like (1): node first piece - direct first piece
        'first_piece_vs_direct_added_ms': round(float((np.median(node_first) - np.median(direct_first)) * ms), 2),
        'decode_tokens_per_s_direct': summary([r['tokens_per_s'] for r in d], digits=0),
        'decode_tokens_per_s_node': summary([r['tps'] for r in n], digits=0),
        'prompt_tokens': int(d[0]['prompt_tokens']),
        'breakdown': breakdown, 'checks': checks,
    }
    if c:
        control_total = np.array([r['total_s'] for r in c])
        first_total = np.array([t['direct']['total_s'] for t in triplets])
        out.update({'control_total_ms': summary(control_total * ms),
                    'control_ratio': _ratio(control_total, first_total),
                    'control_ratio_per_round': [r['control_ratio'] for r in per_round]})
    # The node's cost from its exact per-request parts instead of two processes' medians: (direct + time
    # outside the engine + the node process's CPU during the question) / direct. The CPU term is what the
    # node can take from an engine that fills every core; it overlaps the first term (conversion, the
    # pipe), so this errs high.
    structural = (np.median(direct_total) + np.median(node_total - node_generate)
                  + np.median([r['node_cpu_s'] for r in n])) / np.median(direct_total)
    out['structural_overhead_ratio'] = round(float(structural), 4)
    out['structural_overhead_ratio_low'] = round(float(
        (np.median(direct_total) + np.median(node_total - node_generate)) / np.median(direct_total)), 4)
    return out


def memory(node: NodeProcess, peer: Peer, direct, sizes, max_new_tokens: int = 256) -> Dict[str, object]:
    """Peak RSS of the node, its worker and the direct process; max_length for a one-image question."""
    worker_pid = int(peer.diagnostics.get('worker_pid') or 0)
    out = {'peak_rss_mb': {
        'node': round(peak_rss_bytes(node.pid) / 2 ** 20, 1),
        'worker': round(peak_rss_bytes(worker_pid) / 2 ** 20, 1) if worker_pid else None,
        'direct_engine_process': round(peak_rss_bytes(direct.pid) / 2 ** 20, 1)}}
    rows = []
    for height, width in sizes:
        key = f'{width}x{height}'
        result = direct.generate(key, PROMPT, max_new_tokens)
        saved_tokens = OLD_FIXED_MAX_LENGTH - result['max_length']
        rows.append({'frame': key, 'max_new_tokens': max_new_tokens, 'prompt_tokens': result['prompt_tokens'],
                     'max_length': result['max_length'], 'old_fixed_max_length': OLD_FIXED_MAX_LENGTH,
                     'kv_cache_gib_phi3v': round(result['max_length'] * KV_BYTES_PER_TOKEN_PHI3V / 2 ** 30, 3),
                     'kv_cache_gib_phi3v_old': round(OLD_FIXED_MAX_LENGTH * KV_BYTES_PER_TOKEN_PHI3V / 2 ** 30, 3),
                     'kv_saved_gib_phi3v': round(saved_tokens * KV_BYTES_PER_TOKEN_PHI3V / 2 ** 30, 3)})
    out['max_length'] = rows
    return out
