"""
The verdict of a fault soak: which checks passed (replies, counters, memory, the node's exit), the
findings worth reading, and the summary printed at the end.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Dict, List

from bench.faults.record import print_rows
from bench.process_watch import rounded


def count_verdict(samples: List[dict], key: str, warmup_s: float, max_growth: float) -> dict:
    """Return min/max and the growth of the median from the first to the last fifth."""
    points = [s[key] for s in samples if s['t_s'] >= warmup_s and s.get(key) is not None]
    if len(points) < 5:
        return {'verdict': 'too few samples', 'samples': len(points)}
    fifth = max(1, len(points) // 5)
    first, last = statistics.median(points[:fifth]), statistics.median(points[-fifth:])
    return {'first_fifth_median': first, 'last_fifth_median': last, 'min': min(points),
            'max': max(points), 'growth': last - first,
            'verdict': 'flat' if last - first <= max_growth else 'growing'}


def verdict_checks(result: dict, args: argparse.Namespace) -> Dict[str, bool]:
    counters = result['node_counters_at_end']
    outcomes = counters['answered'] + counters['rejected'] + counters['failed']
    fresh = counters['diagnostics_age_s'] < 5.0
    stop = result['node_stop']
    return {
        'one_reply_per_prompt': result['replies'] == result['prompts_sent'],
        'node_received_every_prompt': fresh and counters['received'] == result['prompts_sent'],
        'node_counters_add_up': (fresh and counters['received'] == outcomes
                                 and counters['queue_depth'] == '0'),
        'node_counters_match_replies': fresh and outcomes == result['replies'],
        'node_alive_throughout': result['node_died'] is None,
        'node_stopped_cleanly': (stop.get('exit_code') == 0 and stop['how'] == 'stopped on SIGINT'
                                 and stop['stop_s'] <= args.stop_timeout
                                 and not stop['processes_left_in_group']),
        'node_rss_flat': result['memory']['node'].get('verdict') == 'flat',
        'node_threads_flat': result['node_threads'].get('verdict') == 'flat',
        'node_fds_flat': result['node_fds'].get('verdict') == 'flat',
        'no_shm_left_after_stop': not result['shm_blocks_left_after_stop'],
        'answers_after_the_faults': bool(result['recovery_probe'].get('answered')),
        'soak_itself_ok': not result['soak_errors'],
    }


def findings(result: dict) -> dict:
    """Return what is reported besides the verdict (it does not fail the soak)."""
    events = result['faults']
    return {
        'service_calls': sum(e.get('calls', 0) for e in events),
        'service_calls_unanswered': sum(e.get('unanswered', 0) for e in events),
        'parameter_calls_with_unexpected_results': [
            {k: e.get(k) for k in ('t_s', 'values', 'invalid', 'results')}
            for e in events if e.get('unexpected')],
        'diagnostics_error_states': sum(v['count']
                                        for v in result['diagnostics_error_states'].values()),
        'diagnostics_silent_over_3_s': len(result['diagnostics_gaps']),
        'node_shm_mapped_mb_max': result['node_shm_mapped_mb_max'],
        'worker_peak_rss_mb_max': rounded(max(
            (v['peak_rss_mb'] for v in result['worker']['per_worker_peak_rss_mb'].values()),
            default=None), 1),
        'node_log': result['node_log'].get('counts'),
    }


def print_summary(result: dict) -> None:
    print()
    header = ('window', 'sent', 'replies', 'answers', 'errors', 'faults', 'restarts',
              'node MB', 'threads', 'fds', 'worker MB', 'diag age')
    print_rows(header, [(f'{r["from_s"]}-{r["to_s"]}', r['sent'], r['replies'], r['answers'],
                         r['errors'], r['faults'], r['restarts'], r['node_rss_mb'],
                         r['node_threads'], r['node_fds'], r['worker_rss_mb'],
                         r['max_diag_age_s']) for r in result['windows']])
    print()
    keys = ('drawn', 'injected', 'skipped', 'calls', 'unanswered_calls', 'prompts', 'bad_frames')
    print_rows(('fault',) + keys + ('other',), [
        (kind,) + tuple(s.get(k, 0) for k in keys)
        + (', '.join(f'{k} {v}' for k, v in s.items() if k not in keys) or None,)
        for kind, s in result['faults_injected'].items()], width=10)
    print()
    counters = result['node_counters_at_end']
    peaks = [v['peak_rss_mb'] for v in result['worker']['per_worker_peak_rss_mb'].values()]
    print(f'prompts sent {result["prompts_sent"]}, replies {result["replies"]} '
          f'({result["answers"]} answers, {result["error_replies"]} ERROR); node counters: '
          f'received {counters["received"]} = answered {counters["answered"]} + rejected '
          f'{counters["rejected"]} + failed {counters["failed"]}, queue_depth '
          f'{counters["queue_depth"]} (diagnostics {counters["diagnostics_age_s"]} s old)')
    print(f'worker restarts {result["worker"]["restarts_reported"]}, per-worker peak RSS '
          f'{round(max(peaks), 1) if peaks else "-"} MB max over {len(peaks)} workers; node '
          f'RSS {result["memory"]["node"].get("verdict")} '
          f'({result["memory"]["node"].get("growth_mb")} MB), threads '
          f'{result["node_threads"].get("verdict")}, fds {result["node_fds"].get("verdict")}; '
          f'node stop: {result["node_stop"]["how"]} in {result["node_stop"]["stop_s"]} s, '
          f'exit code {result["node_stop"]["exit_code"]}')
    for kind, count in result['error_reply_kinds'].items():
        print(f'  {count:5d} x ERROR: {kind}')
    for key, value in result['diagnostics_error_states'].items():
        print(f'  diagnostics ERROR x{value["count"]} ({value["first_s"]}-{value["last_s"]} s): '
              f'{value["example"][:150]}')
    for gap in result['diagnostics_gaps']:
        print(f'  no /diagnostics for {gap["seconds"]} s from {gap["from_s"]} s'
              f'{" to the end" if gap["until_end_of_run"] else ""}; faults just before: '
              f'{", ".join(gap["faults_just_before"]) or "none"}')
    for error in result['soak_errors']:
        print(f'  soak error: {error.strip().splitlines()[-1]}')
    print('findings (not part of the verdict): ' + ', '.join(
        f'{k} {v}' for k, v in result['findings'].items()
        if k != 'parameter_calls_with_unexpected_results')
        + f', parameter calls with unexpected results '
          f'{len(result["findings"]["parameter_calls_with_unexpected_results"])}')
    print_rows(('check', 'result'), [(k, 'ok' if v else 'FAILED')
                                     for k, v in result['checks'].items()], width=28)
