"""
Fault mode of the soak test (`python -m bench.soak --faults`): prompts flow while things break.

    python -m bench.soak --faults --duration 120 --out .cache/soak_faults.json
    python -m bench.soak --faults --seed 7 --fault-kinds stall,cancel_burst=3 --duration 120

The node and a synthetic camera run as in the plain soak (their own processes, process groups and
ROS domain, localhost only; the node with a short stall_timeout). A client in this process sends a
prompt every --prompt-interval seconds and records every reply; after a random pause of
--fault-interval MIN:MAX seconds (seeded by --seed) a fault driver does one of:

* kill: SIGKILL the worker process;
* stall: SIGSTOP the worker for 1 to --max-stall seconds, then SIGCONT (other faults may come
  meanwhile);
* cancel: call ~/cancel once; cancel_burst: 50-300 calls back to back, not waiting for each;
* reset: call ~/reset;
* params: set one to three of max_new_tokens, history_turns, max_queue, busy_policy through
  set_parameters (one time in six with an out-of-range value, which must be refused);
* bad_frames: for 0.5-2 s, malformed frames on the image topic between the camera's good ones
  (wrong data length, a 6000x6000 header with 1 byte, unknown or empty encoding, zero size; with
  --compressed: random bytes, empty data, an unknown format, a JPEG start and garbage), half of
  them followed at once by a prompt;
* prompt_burst: 20-100 prompts at once, one in ten empty, one in ten very long.

Every prompt but the empty ones has a text of its own (its number in it). The replies carry no
request id, so they are counted. After --duration the driver stops (stalled workers get SIGCONT),
the soak waits up to --drain-timeout for the last replies and for the node's counters to settle,
asks a few more prompts to see that the node answers again, waits for stray second replies, stops
the node with SIGINT and gives it --stop-timeout seconds. The verdict (exit code 1 when it fails):
exactly as many replies as prompts sent; prompts_received == answered + rejected + failed ==
replies with queue_depth 0; the node alive throughout and exiting with 0 in time; node RSS, thread
count and open files flat after --warmup; no shared-memory block left; an answer after the faults.
Every wait is bounded and the node's and camera's process groups are killed at the end.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Dict, List, Optional

from bench.faults.client import category, ERROR_PREFIX, FaultClient
from bench.faults.driver import _prompter, DEFAULT_WEIGHTS, FaultDriver, parse_kinds, parse_range, SANE
from bench.faults.record import diagnostics_gaps, fault_summary, sample, scan_log, window_rows
from bench.faults.verdict import count_verdict, findings, print_summary, verdict_checks
from bench.process_watch import memory_verdict, python_module, shm_blocks
import psutil


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fault mode's options to the soak's parser."""
    group = parser.add_argument_group('fault mode (--faults, see bench/faults/)')
    group.add_argument('--faults', action='store_true',
                       help='inject faults while prompts flow; verdict on replies and counters')
    group.add_argument('--seed', type=int, default=1, help='fault driver RNG seed (default 1)')
    group.add_argument('--fault-interval', type=parse_range, default=(2.0, 8.0),
                       metavar='MIN:MAX', help='seconds between faults (default 2:8)')
    group.add_argument('--fault-kinds', type=parse_kinds, default=dict(DEFAULT_WEIGHTS),
                       metavar='NAME[=WEIGHT],...',
                       help=f'faults to draw from, with weights (default all: '
                            f'{",".join(f"{k}={w}" for k, w in DEFAULT_WEIGHTS.items())})')
    group.add_argument('--max-faults', type=int, default=1000, help='at most this many faults')
    group.add_argument('--max-stall', type=float, default=5.0,
                       help='longest SIGSTOP of the worker, seconds (default 5)')
    group.add_argument('--stall-timeout', type=float, default=2.5,
                       help="the node's stall_timeout parameter in fault mode (default 2.5 s)")
    group.add_argument('--compressed', action='store_true',
                       help='camera, node and bad frames on <image>/compressed (CompressedImage)')
    group.add_argument('--drain-timeout', type=float, default=45.0,
                       help='seconds to wait for the last replies after the faults (default 45)')
    group.add_argument('--stop-timeout', type=float, default=20.0,
                       help='seconds the node may take to stop on SIGINT (default 20)')
    group.add_argument('--max-thread-growth', type=float, default=2.0,
                       help='node threads: allowed growth of the median, first to last fifth')
    group.add_argument('--max-fd-growth', type=float, default=8.0,
                       help='node open files: allowed growth of the median, first to last fifth')
    group.add_argument('--verbose', action='store_true', help='print every sample as JSON')


def stop_process(process: subprocess.Popen, timeout: float) -> dict:
    """SIGINT, wait up to timeout, else SIGKILL the process group; what remained is listed."""
    outcome: dict = {}
    started = time.monotonic()
    if process.poll() is not None:
        outcome['how'] = 'had already exited'
    else:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
            outcome['how'] = 'stopped on SIGINT'
        except subprocess.TimeoutExpired:
            outcome['how'] = f'still running {timeout:g} s after SIGINT: process group killed'
            _kill_group(process.pid)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                outcome['how'] += ' (and it did not die)'
    outcome['stop_s'] = round(time.monotonic() - started, 2)
    outcome['exit_code'] = process.returncode
    grace = time.monotonic() + 5.0   # the resource tracker ends a moment after the node
    while group_members(process.pid) and time.monotonic() < grace:
        time.sleep(0.1)
    left = group_members(process.pid)
    outcome['processes_left_in_group'] = left
    if left:
        _kill_group(process.pid)
    return outcome


def group_members(pgid: int) -> List[str]:
    """Return 'pid command' of the live processes in a process group."""
    members = []
    for proc in psutil.process_iter(['pid', 'cmdline', 'status']):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info['status'] != psutil.STATUS_ZOMBIE:
                members.append(f'{proc.pid} {" ".join(proc.info["cmdline"] or [])[-120:]}')
        except (OSError, psutil.Error):
            continue
    return members


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def drain(client: FaultClient, timeout: float) -> dict:
    """Wait for a reply per prompt sent and for settled counters in a later diagnostics message."""
    started = time.monotonic()

    def done() -> bool:
        last_reply = client.replies[-1][0] if client.replies else 0.0
        return (len(client.replies) >= client.sent and client.settled()
                and client.diagnostics_at > max(last_reply, started))
    complete = client.wait_for(done, timeout)
    return {'complete': complete, 'waited_s': round(time.monotonic() - started, 2)}


def recovery_probe(client: FaultClient, budget_s: float) -> dict:
    """Sane parameters, then up to 3 prompts one at a time until one is answered."""
    started = time.monotonic()
    deadline = started + budget_s
    response, why = client.call(client.parameter_client, client.set_parameters_request(SANE),
                                min(10.0, budget_s))
    probe: dict = {'sane_parameters': why or [r.successful for r in response.results],
                   'attempts': []}
    while time.monotonic() < deadline and len(probe['attempts']) < 3:
        client.wait_for(lambda: client.diagnostics.get('engine_state') == 'ready',
                        deadline - time.monotonic())
        with client.changed:
            count = len(client.replies)
            state = client.diagnostics.get('engine_state')
        client.ask('probe', lambda n: f'Question {n} (probe after the faults): what is there?')
        got = client.wait_for(lambda: len(client.replies) > count,
                              min(20.0, max(0.0, deadline - time.monotonic())))
        with client.changed:
            reply = client.replies[count] if got else None
        probe['attempts'].append({'engine_state_before': state,
                                  'reply': None if reply is None else reply[2][:160]})
        if reply is not None and reply[1]:
            break
    probe['answered'] = any(a['reply'] is not None and not a['reply'].startswith(ERROR_PREFIX)
                            for a in probe['attempts'])
    probe['took_s'] = round(time.monotonic() - started, 2)
    return probe


def run(args: argparse.Namespace) -> int:
    """
    Run the fault soak; return the exit code (0 when the verdict passed).

    The ROS domain is taken by bench.soak before this (args.domain_id, already in os.environ).
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))

    workdir = tempfile.mkdtemp(prefix='phi3v_soak_faults_')
    model = args.model
    if model is None:
        from phi3v_ros.tools.make_tiny_model import make_tiny_model
        model = str(make_tiny_model(os.path.join(workdir, 'model'), seed=0))
    width, height = args.size
    parameters = {'model_path': model, 'provider': args.provider,
                  'max_new_tokens': args.max_new_tokens, 'max_queue': 8,
                  'image_wait_timeout': 2.0, 'stall_timeout': args.stall_timeout,
                  'diagnostics_period': 0.5, 'use_compressed': args.compressed}
    node_args = python_module('phi3v_ros.node.vision_qa_node') + ['--ros-args']
    for name, value in parameters.items():
        node_args += ['-p', f'{name}:={value}']
    for extra in args.param:
        node_args += ['-p', extra]
    camera_args = (python_module('phi3v_ros.tools.synthetic_camera')
                   + ['--width', str(width), '--height', str(height),
                      '--rate', str(args.frame_rate)] + (['--compressed'] if args.compressed
                                                         else []))
    log_path = args.log or os.path.splitext(args.out)[0] + '_node.log'
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    shm_before = shm_blocks()

    log_file = open(log_path, 'w', encoding='utf-8')
    node_proc = subprocess.Popen(node_args, stdout=log_file, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    camera_proc = subprocess.Popen(camera_args, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    client = None
    driver = None
    stop_prompts = threading.Event()
    prompter = None
    soak_errors: List[str] = []
    samples: List[dict] = []
    worker_peaks: Dict[int, dict] = {}
    shm_seen: set = set()
    result: dict = {}
    node_died: Optional[dict] = None
    stopped: dict = {}
    start = time.monotonic()
    try:
        client = FaultClient(args.compressed)
        node = psutil.Process(node_proc.pid)
        deadline = time.monotonic() + 120
        while not (client.connected() and client.diagnostics.get('engine_state') == 'ready'
                   and int(client.diagnostics.get('frames_received') or 0) > 0
                   and client.cancel_client.service_is_ready()
                   and client.parameter_client.service_is_ready()):
            if time.monotonic() > deadline or node_proc.poll() is not None:
                raise RuntimeError(f'the node did not become ready; see {log_path}')
            time.sleep(0.1)
        print(f'node ready (pid {node_proc.pid}, domain {args.domain_id}); fault soak for '
              f'{args.duration:g} s, seed {args.seed}, a fault every {args.fault_interval[0]:g}-'
              f'{args.fault_interval[1]:g} s from {",".join(sorted(args.fault_kinds))}; '
              f'a prompt every {args.prompt_interval:g} s; node log {log_path}', flush=True)
        start = time.monotonic()
        driver = FaultDriver(client, node, args, start)
        prompter = threading.Thread(target=_prompter, name='soak-prompter', daemon=True,
                                    args=(client, args.prompt_interval, stop_prompts,
                                          soak_errors))
        prompter.start()
        driver.start_driving()
        next_sample = start
        while time.monotonic() - start < args.duration:
            if node_proc.poll() is not None:
                node_died = {'at_s': round(time.monotonic() - start, 1),
                             'exit_code': node_proc.returncode}
                print(f'the node exited with {node_proc.returncode} at {node_died["at_s"]} s',
                      flush=True)
                break
            if time.monotonic() >= next_sample:
                samples.append(sample(node, client, start, worker_peaks, shm_seen))
                if args.verbose:
                    print(json.dumps(samples[-1]), flush=True)
                else:
                    s = samples[-1]
                    print(f'{s["t_s"]:7.1f} s: sent {s["sent"]}, replies {s["replies"]} '
                          f'({s["errors"]} ERROR), faults {len(driver.events)}, state '
                          f'{s["engine_state"]}, restarts {s["worker_restarts"]}, node '
                          f'{s["node_rss_mb"]} MB / {s["node_threads"]} threads / '
                          f'{s["node_fds"]} fds, worker {s["worker_rss_mb"]} MB, diagnostics '
                          f'{s["diagnostics_age_s"]} s old', flush=True)
                next_sample += args.sample_interval
            time.sleep(0.2)
        faults_end = time.monotonic()
        stop_prompts.set()
        prompter.join(5)
        driver.stop()
        print('faults stopped; waiting for the last replies', flush=True)
        drained = {'complete': False, 'skipped': 'the node died'} if node_died else \
            drain(client, args.drain_timeout)
        silent_s = time.monotonic() - client.diagnostics_at
        if node_died or silent_s > 10:
            why = 'the node died' if node_died else f'no /diagnostics for {silent_s:.0f} s'
            probe = {'answered': False, 'skipped': why}
            final = {'complete': False, 'skipped': why}
        else:
            probe = recovery_probe(client, 45.0)
            final = drain(client, 20.0)
        time.sleep(2.0)   # a second reply to any prompt would show up now
        driver.settle_calls(force=True)
        if node_proc.poll() is None:
            samples.append(sample(node, client, start, worker_peaks, shm_seen))
        elif node_died is None:
            node_died = {'at_s': round(time.monotonic() - start, 1),
                         'exit_code': node_proc.returncode, 'after_the_faults': True}
        with client.changed:
            replies = list(client.replies)
            sent = client.sent
            sent_by_kind = dict(client.sent_by_kind)
            sent_times = list(client.sent_times)
            values = dict(client.diagnostics)
            diagnostics_age = time.monotonic() - client.diagnostics_at
            settled = client.settled()
            states = list(client.states)
            error_states = {k: dict(v) for k, v in client.error_states.items()}
            diag_times = list(client.diagnostic_times)
            diag_worker_pids = list(client.worker_pids)
            max_restarts = client.max_restarts
            pieces = client.pieces
        counters = {key: int(values.get(f'prompts_{key}', -1))
                    for key in ('received', 'answered', 'rejected', 'failed')}
        errors = [r[2] for r in replies if not r[1]]
        events = driver.events
        result = {
            'mode': 'faults',
            'machine': {'cpu': platform.processor() or platform.machine(),
                        'cores': os.cpu_count(), 'platform': platform.platform(),
                        'python': platform.python_version()},
            'settings': {
                'duration_s': args.duration, 'seed': args.seed,
                'fault_interval_s': list(args.fault_interval), 'fault_kinds': args.fault_kinds,
                'max_faults': args.max_faults, 'max_stall_s': args.max_stall,
                'prompt_interval_s': args.prompt_interval, 'frame_rate_hz': args.frame_rate,
                'size': f'{width}x{height}', 'compressed': args.compressed,
                'node_parameters': {k: v for k, v in parameters.items() if k != 'model_path'},
                'extra_parameters': args.param, 'domain_id': args.domain_id,
                'model': 'tiny random-weight phi3v (make_tiny_model)' if args.model is None
                else args.model},
            'prompts_sent': sent, 'prompts_sent_by_kind': sent_by_kind,
            'replies': len(replies), 'answers': len(replies) - len(errors),
            'error_replies': len(errors),
            'error_reply_kinds': dict(collections.Counter(map(category, errors)).most_common(20)),
            'stream_messages': pieces,
            'node_counters_at_end': {**counters, 'queue_depth': values.get('queue_depth'),
                                     'diagnostics_age_s': round(diagnostics_age, 2)},
            'drain': drained, 'recovery_probe': probe, 'final_drain': final,
            'faults_injected': fault_summary(events),
            'worker': {'restarts_reported': max_restarts,
                       'pids_in_diagnostics': len(diag_worker_pids),
                       'per_worker_peak_rss_mb': {str(pid): v for pid, v in
                                                  worker_peaks.items()}},
            'engine_states': [{'t_s': round(t - start, 2), 'state': s, 'detail': d[:160]}
                              for t, s, d in states],
            'diagnostics_error_states': {
                k: {'count': v['count'], 'first_s': round(v['first'] - start, 2),
                    'last_s': round(v['last'] - start, 2), 'example': v['example'][:200]}
                for k, v in error_states.items()},
            'diagnostics_gaps': diagnostics_gaps(diag_times, time.monotonic(), start, 3.0,
                                                 events),
            'node_died': node_died,
            'memory': {'node': memory_verdict(samples, 'node_rss_mb', args.warmup,
                                              args.max_growth_mb)},
            'node_threads': count_verdict(samples, 'node_threads', args.warmup,
                                          args.max_thread_growth),
            'node_fds': count_verdict(samples, 'node_fds', args.warmup, args.max_fd_growth),
            'node_shm_mapped_mb_max': max((s['node_shm_mapped_mb'] or 0 for s in samples),
                                          default=0),
            'node_shm_blocks_max': max((s['node_shm_blocks'] for s in samples), default=0),
            'soak_errors': soak_errors + driver.errors,
            'faults': events,
            'faults_ended_at_s': round(faults_end - start, 1),
        }
        result['windows'] = window_rows(samples, replies, events, start, args.window,
                                        [t - start for t in sent_times])
        result['samples'] = samples
        result['settled'] = settled
    except KeyboardInterrupt:
        soak_errors.append('interrupted')
    except Exception:   # noqa: BLE001 - cleaned up and reported below
        soak_errors.append(traceback.format_exc())
    finally:
        stop_prompts.set()
        if driver is not None:
            driver.stop(5.0)
            driver.settle_calls(force=True)
        stopped = stop_process(node_proc, args.stop_timeout)
        camera = stop_process(camera_proc, 10.0)
        if client is not None:
            try:
                client.close()
            except Exception:   # noqa: BLE001 - closing is best effort
                soak_errors.append(traceback.format_exc())
        log_file.close()
        time.sleep(0.5)
        leftover = sorted(name for name in shm_seen if os.path.exists(f'/dev/shm/{name}'))
        for name in leftover:   # recorded; removed so that /dev/shm does not fill up
            try:
                os.unlink(f'/dev/shm/{name}')
            except OSError:
                pass
        new_on_machine = sorted(set(shm_blocks()) - set(shm_before))
        shutil.rmtree(workdir, ignore_errors=True)
    if not result:
        print('the fault soak could not run:\n' + '\n'.join(soak_errors), file=sys.stderr)
        print(f'node log: {log_path}', file=sys.stderr)
        return 2
    result['node_stop'] = stopped
    result['camera_stop'] = camera
    result['node_shm_blocks_seen'] = sorted(shm_seen)
    result['shm_blocks_left_after_stop'] = leftover    # of those the node had mapped
    result['shm_blocks_new_on_the_machine'] = new_on_machine   # any process's
    result['node_log'] = {'path': log_path, **scan_log(log_path)}
    result['checks'] = checks = verdict_checks(result, args)
    result['findings'] = findings(result)
    result['passed'] = passed = all(checks.values())
    print_summary(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=1)
        f.write('\n')
    print(f'fault soak {"passed" if passed else "FAILED"}; results in {args.out}, '
          f'node log {log_path}')
    return 0 if passed else 1
