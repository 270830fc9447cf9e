"""
Recording the fault soak: samples of the node's memory, threads, files and shared memory over time,
the node's log scanned for tracebacks, gaps in /diagnostics, and the tables per time window.
"""
from __future__ import annotations

import collections
import os
import re
import time
from typing import Dict, List, Optional, Tuple

from bench.faults.client import FaultClient
from bench.process_watch import rounded, rss_mb, worker_of
import psutil


def peak_rss_mb(pid: int) -> Optional[float]:
    """Return the peak resident set (VmHWM) of a process in MB, None when it is gone."""
    try:
        with open(f'/proc/{pid}/status', encoding='utf-8') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mapped_shm(pid: int) -> Tuple[set, Optional[float]]:
    """Return the /dev/shm/psm_* blocks a process has mapped and their apparent size in MB."""
    names = set()
    try:
        with open(f'/proc/{pid}/maps', encoding='utf-8') as f:
            for line in f:
                if '/dev/shm/psm_' in line:
                    names.add(line.split('/dev/shm/', 1)[1].split()[0])
    except OSError:
        return names, None
    total = 0
    for name in names:
        try:
            total += os.stat(f'/dev/shm/{name}').st_size
        except OSError:
            pass
    return names, total / 2 ** 20


def diagnostics_gaps(times: List[float], end: float, start: float, limit_s: float,
                     events: List[dict]) -> List[dict]:
    """Return silences of /diagnostics longer than limit_s, with the faults of the 10 s before."""
    gaps = []
    for before, after in zip(times, times[1:] + [end]):
        if after - before > limit_s:
            t0 = before - start
            gaps.append({'from_s': round(t0, 2), 'to_s': round(after - start, 2),
                         'seconds': round(after - before, 2),
                         'until_end_of_run': after == end,
                         'faults_just_before': [f'{e["t_s"]} {e["fault"]}' for e in events
                                                if t0 - 10 <= e['t_s'] <= t0 + 0.5]})
    return gaps


def scan_log(path: str) -> dict:
    """Return counts of ERROR/WARN lines and tracebacks in the node's log, with a few examples."""
    counts: collections.Counter = collections.Counter()
    tracebacks: List[str] = []
    examples: Dict[str, str] = {}
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for index, line in enumerate(lines):
        for level in ('[ERROR]', '[WARN]', '[FATAL]'):
            if level in line:
                counts[level.strip('[]')] += 1
                key = re.sub(r'\d+(\.\d+)?', '#', line.split(']: ', 1)[-1])[:100]
                examples.setdefault(key, line[:300])
        if line.startswith('Traceback'):
            counts['Traceback'] += 1
            if len(tracebacks) < 3:
                tracebacks.append('\n'.join(lines[index:index + 25]))
    warn_kinds = collections.Counter(
        re.sub(r'\d+(\.\d+)?', '#', line.split(']: ', 1)[-1])[:100]
        for line in lines if '[WARN]' in line or '[ERROR]' in line)
    return {'counts': dict(counts), 'warning_and_error_kinds': dict(warn_kinds.most_common(15)),
            'tracebacks': tracebacks}


def sample(node: psutil.Process, client: FaultClient, start: float, worker_peaks: dict,
           shm_seen: set) -> dict:
    """Take one sample of the node, its worker, shared memory and the counts so far."""
    now = time.monotonic()
    shm_names, shm_mb = mapped_shm(node.pid)
    shm_seen |= shm_names
    worker = worker_of(node)
    worker_rss = rss_mb(worker)
    if worker is not None:
        peak = peak_rss_mb(worker.pid)
        entry = worker_peaks.setdefault(worker.pid, {'first_seen_s': round(now - start, 1)})
        entry['peak_rss_mb'] = max(entry.get('peak_rss_mb') or 0.0, peak or 0.0,
                                   worker_rss or 0.0)
        entry['last_seen_s'] = round(now - start, 1)
    try:
        threads, fds = node.num_threads(), node.num_fds()
    except psutil.Error:
        threads = fds = None
    with client.changed:
        values = dict(client.diagnostics)
        diagnostics_age = None if not client.diagnostics_at else now - client.diagnostics_at
        replies = len(client.replies)
        errors = sum(1 for r in client.replies if not r[1])
        sent = client.sent
    return {
        't_s': round(now - start, 1), 'node_rss_mb': rounded(rss_mb(node), 1),
        'node_threads': threads, 'node_fds': fds,
        'node_shm_blocks': len(shm_names), 'node_shm_mapped_mb': rounded(shm_mb, 1),
        'worker_pid': None if worker is None else worker.pid,
        'worker_rss_mb': rounded(worker_rss, 1), 'sent': sent, 'replies': replies,
        'errors': errors, 'diagnostics_age_s': rounded(diagnostics_age, 2),
        'engine_state': values.get('engine_state'), 'queue_depth': values.get('queue_depth'),
        'worker_restarts': values.get('worker_restarts'),
        'prompts_received': values.get('prompts_received'),
        'frames_received': values.get('frames_received'),
    }


def window_rows(samples: List[dict], replies: List[tuple], events: List[dict], start: float,
                window_s: float, sent_times: List[float]) -> List[dict]:
    rows = []
    end = max([s['t_s'] for s in samples] + [0.0])
    t = 0.0
    while t < end:
        in_window = [r for r in replies if t <= r[0] - start < t + window_s]
        last = ([s for s in samples if s['t_s'] < t + window_s][-1:] or [{}])[0]
        window_samples = [s for s in samples if t <= s['t_s'] < t + window_s]
        rows.append({
            'from_s': round(t), 'to_s': round(min(t + window_s, end)),
            'sent': sum(1 for at in sent_times if t <= at < t + window_s),
            'replies': len(in_window), 'answers': sum(1 for r in in_window if r[1]),
            'errors': sum(1 for r in in_window if not r[1]),
            'faults': sum(1 for e in events if t <= e['t_s'] < t + window_s),
            'restarts': last.get('worker_restarts'), 'node_rss_mb': last.get('node_rss_mb'),
            'node_threads': last.get('node_threads'), 'node_fds': last.get('node_fds'),
            'worker_rss_mb': last.get('worker_rss_mb'),
            'max_diag_age_s': max((s['diagnostics_age_s'] or 0.0 for s in window_samples),
                                  default=None),
        })
        t += window_s
    return rows


def print_rows(header: Tuple[str, ...], rows: List[tuple], width: int = 9) -> None:
    print(' | '.join(f'{h:>{width}}' for h in header))
    for row in rows:
        print(' | '.join(f'{"-" if c is None else c!s:>{width}}' for c in row))


def fault_summary(events: List[dict]) -> Dict[str, dict]:
    """Return per fault kind: how many were drawn, injected and skipped, and what came of them."""
    summary: Dict[str, dict] = {}
    for event in events:
        entry = summary.setdefault(event['fault'], collections.Counter())
        entry['drawn'] += 1
        entry['skipped' if 'skipped' in event else 'injected'] += 1
        if 'soak_error' in event:
            entry['soak_errors'] += 1
        if event['fault'] == 'stall' and 'outcome' in event:
            entry['killed_by_node_before_sigcont' if 'by the node' in event['outcome']
                  else 'killed_by_fault_before_sigcont' if 'gone' in event['outcome']
                  else 'resumed'] += 1
        if 'calls' in event:
            entry['calls'] += event['calls']
            entry['unanswered_calls'] += event['unanswered']
        if event['fault'] in ('cancel', 'cancel_burst') and 'calls' in event:
            entry['cancelled_something'] += event.get('cancelled', 0)
        if event.get('aimed'):
            entry['aimed_mid_answer'] += 1
        if event['fault'] == 'params' and event.get('unexpected'):
            entry['unexpected_parameter_results'] += len(event['unexpected'])
        if event['fault'] == 'params' and event.get('invalid'):
            entry['with_invalid_value'] += 1
        if 'frames' in event:
            entry['bad_frames'] += sum(event['frames'].values())
        if 'prompts' in event:
            entry['prompts'] += event['prompts']
    return {kind: dict(counts) for kind, counts in sorted(summary.items())}
