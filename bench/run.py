"""`make bench`: what vision_qa_node costs on top of the model, side by side, with targets.

    python -m bench.run [--out bench/results.json] [--repeats 30] [--quick] [--only overhead,ingestion,...]

Everything runs on this machine's CPU with the tiny random-weight model (phi3v_ros make_tiny_model),
where the node's own costs are easiest to see: one-image time to first token is ~150 ms and decoding
runs at thousands of tokens per second, so per-token costs show. Each part is in its own module:
overhead.py (1, 2, 5), ingestion.py (3), responsiveness.py (4), throughput.py (6), startup.py (the `ask`
client's start-up). The tables are printed and every number is written to the JSON file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from typing import Dict

from bench import ingestion, overhead, responsiveness, startup, throughput
import cv2

from bench.common import (NodeProcess, Peer, machine_description, test_frame_bgr,
                          use_large_shm_profile)
from bench.direct import DirectEngine
from phi3v_ros.tools.ros_domain import isolate_ros_domain

SIZES = ((480, 640), (1080, 1920))
PARTS = ('overhead', 'throughput', 'ingestion', 'responsiveness', 'startup')
TARGETS = {
    'overhead_ratio_640x480': ('<=', 1.05),
    'overhead_ratio_1920x1080': ('<=', 1.10),
    'first_piece_added_ms_640x480': ('<=', 5.0),
    'first_piece_added_ms_1920x1080': ('<=', 5.0),
    'ingestion_cpu_per_frame_ratio_1920x1080': ('<=', 1.2),
    'image_callback_delay_p99_ms_during_inference': ('<', 20.0),
    'reset_round_trip_p99_ms_during_inference': ('<', 20.0),
}


def _models(workdir: str) -> Dict[str, str]:
    from phi3v_ros.tools.make_tiny_model import make_tiny_model
    return {'short': str(make_tiny_model(os.path.join(workdir, 'tiny'), seed=0, context_length=4096)),
            'long': str(make_tiny_model(os.path.join(workdir, 'tiny_long'), seed=0, context_length=32768))}


def run_overhead(model: str, args, results: Dict[str, object], peer: Peer) -> None:
    rounds = {size: [] for size in SIZES}
    for index in range(args.rounds):
        peer.forget_node()
        node = NodeProcess({'model_path': model, 'provider': 'cpu', 'max_new_tokens': args.max_new_tokens,
                            'stream_interval': args.stream_interval})
        directs = []
        try:
            directs = [DirectEngine(model) for _ in range(2)]
            peer.wait_ready()
            for height, width in SIZES:
                print(f'[bench] overhead per question, round {index + 1}/{args.rounds}, {width}x{height}',
                      flush=True)
                rounds[(height, width)].append(overhead.collect_round(
                    node, peer, directs, height, width, args.repeats, args.warmup, args.max_new_tokens))
            if index == args.rounds - 1:
                print('[bench] memory', flush=True)
                results['memory'] = overhead.memory(node, peer, directs[0], SIZES)
        finally:
            for direct in directs:
                direct.close()
            node.stop()
    per_size = [overhead.summarize(f'{w}x{h}', rounds[(h, w)], args.max_new_tokens) for h, w in SIZES]
    results['overhead'] = per_size
    for row in per_size:
        results[f'overhead_ratio_{row["frame"]}'] = row['overhead_ratio']
        results[f'control_ratio_{row["frame"]}'] = row.get('control_ratio')
        results[f'structural_overhead_ratio_{row["frame"]}'] = row['structural_overhead_ratio']
        results[f'added_ms_{row["frame"]}'] = row['added_ms']
        results[f'first_piece_added_ms_{row["frame"]}'] = row['first_piece_added_ms']


def run_throughput(model: str, args, results: Dict[str, object], peer: Peer) -> None:
    peer.forget_node()
    node = NodeProcess({'model_path': model, 'provider': 'cpu', 'max_new_tokens': args.max_new_tokens,
                        'stream_interval': args.stream_interval})
    direct = None
    try:
        direct = DirectEngine(model)
        peer.wait_ready()
        # the ceiling: the engine alone, back to back, on the same frame
        bgr = test_frame_bgr(480, 640)
        direct.load_frame('640x480', cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        peer.deliver_frame(bgr, 'bgr8')
        for _ in range(2):
            direct.generate('640x480', overhead.PROMPT, args.max_new_tokens)
        start = time.monotonic()
        count = 0
        while time.monotonic() - start < args.flood_s / 2:
            direct.generate('640x480', overhead.PROMPT, args.max_new_tokens)
            count += 1
        ceiling = count * 60.0 / (time.monotonic() - start)
        rows = []
        for policy in ('reject', 'drop_oldest'):
            print(f'[bench] throughput under load, busy_policy {policy}', flush=True)
            rows.append(throughput.flood(node, peer, policy, args.flood_rate, args.flood_s, max_queue=4))
        results['throughput'] = {'frame': '640x480', 'max_new_tokens': args.max_new_tokens, 'policies': rows,
                                 'direct_back_to_back_answers_per_minute': round(ceiling, 1)}
        if 'overhead' in results:   # the same ceiling from the pooled direct processes of every round
            median_s = results['overhead'][0]['direct_total_ms']['median'] / 1e3
            results['throughput']['direct_pooled_answers_per_minute'] = round(60.0 / median_s, 1)
    finally:
        if direct is not None:
            direct.close()
        node.stop()


def _check(name: str, value) -> Dict[str, object]:
    op, target = TARGETS[name]
    met = None if value is None else (value <= target if op == '<=' else value < target)
    return {'value': value, 'target': f'{op} {target:g}', 'met': met}


def targets(results: Dict[str, object]) -> Dict[str, object]:
    values = {name: results.get(name) for name in TARGETS}
    if 'ingestion' in results:
        # per received frame: a best-effort reader that falls behind skips frames and spends nothing
        # on them, so the raw CPU ratio rewards the one that keeps up less (both are in the table)
        values['ingestion_cpu_per_frame_ratio_1920x1080'] = results['ingestion']['cpu_per_frame_ratio']
    if 'responsiveness' in results:
        busy = results['responsiveness']['during_inference']
        values['image_callback_delay_p99_ms_during_inference'] = busy['image_callback_delay_node'].get('p99_ms')
        values['reset_round_trip_p99_ms_during_inference'] = busy['reset_round_trip'].get('p99_ms')
    return {name: _check(name, value) for name, value in values.items() if value is not None}


def _num(value: float) -> str:
    """Three significant figures or so: 237, 23.7, 2.37."""
    magnitude = abs(value)
    return f'{value:.0f}' if magnitude >= 100 else f'{value:.1f}' if magnitude >= 10 else f'{value:.2f}'


def _fmt(summary: Dict[str, float], unit: str = '') -> str:
    if not summary or 'median' not in summary:
        return '-'
    return f'{_num(summary["median"])}{unit} ({_num(summary["p10"])} to {_num(summary["p90"])})'


def table(results: Dict[str, object]) -> str:
    """The Markdown table of the README (medians; p10-p90 in brackets)."""
    lines = ['| measurement | 640x480 | 1920x1080 | target | met |', '|---|---|---|---|---|']
    checks = results.get('targets', {})

    def mark(name):
        check = checks.get(name)
        return '-' if check is None else ('yes' if check['met'] else '**no**')
    over = {row['frame']: row for row in results.get('overhead', [])}
    if over:
        a, b = over.get('640x480'), over.get('1920x1080')

        def pair(fn):
            return [fn(a) if a else '-', fn(b) if b else '-']
        rows = [
            ('engine called directly (2 processes per round), question to full answer, ms', pair(lambda r: _fmt(r['direct_total_ms'])), '', ''),
            ('through the node (prompt published to answer received), ms', pair(lambda r: _fmt(r['node_total_ms'])), '', ''),
            ('**overhead ratio** (median node / median direct, all rounds)', pair(lambda r: f'**{r["overhead_ratio"]:.3f}**'),
             '<= 1.05 / <= 1.10', f'{mark("overhead_ratio_640x480")} / {mark("overhead_ratio_1920x1080")}'),
            ('overhead ratio per round (fresh processes each)', pair(lambda r: ' '.join(f'{x:.2f}' for x in r['overhead_ratio_per_round'])), '', ''),
            ('control: a second direct process / direct (all rounds; per round)', pair(lambda r: f'{r["control_ratio"]:.3f}; ' + ' '.join(f'{x:.2f}' for x in r['control_ratio_per_round']) if 'control_ratio' in r else '-'), '', ''),
            ('overhead ratio from exact parts: (direct + time outside engine [+ node CPU]) / direct', pair(lambda r: f'{r["structural_overhead_ratio_low"]:.3f} - {r["structural_overhead_ratio"]:.3f}'), '', ''),
            ('added ms (median node - median direct)', pair(lambda r: f'{r["added_ms"]:+.1f}'), '', ''),
            ('- DDS: prompt in + answer out', pair(lambda r: _fmt(r['breakdown']['dds_prompt_and_answer_ms'])), '', ''),
            ('- node: queue + wait + convert + to worker + handoff + reply + publish',
             pair(lambda r: _fmt(r['breakdown']['node_own_ms'])), '', ''),
            ('  - frame conversion (bgr8 to RGB)', pair(lambda r: _fmt(r['breakdown']['convert_ms'])), '', ''),
            ('  - to the worker (shared memory + pipe)', pair(lambda r: _fmt(r['breakdown']['to_worker_ms'])), '', ''),
            ('  - worker handoff (pipe both ways, outside generate)', pair(lambda r: _fmt(r['breakdown']['handoff_ms'])), '', ''),
            ('  - queueing (prompt callback to dispatcher)', pair(lambda r: _fmt(r['breakdown']['queue_ms'])), '', ''),
            ('  - reply + publish', pair(lambda r: f'{r["breakdown"]["reply_ms"]["median"] + r["breakdown"]["publish_ms"]["median"]:.2f}'), '', ''),
            ('- generate slower in the worker than directly (median - median)',
             pair(lambda r: f"{r['breakdown']['generate_slower_in_worker_ms_of_medians']:g}"), '', ''),
            ('node time outside its engine, per request (exact: total - generate in the worker)',
             pair(lambda r: _fmt(r['breakdown']['outside_generate_ms'])), '', ''),
            ('stream messages per answer (128 tokens)', pair(lambda r: '{median:g} ({p10:g} to {p90:g})'.format(**r['breakdown']['stream_messages_per_answer'])), '', ''),
            ('CPU per question, ms: node process / worker / direct process', pair(lambda r: f"{r['breakdown']['node_process_cpu_ms']['median']:g} / {r['breakdown']['worker_cpu_ms']['median']:g} / {r['breakdown']['direct_process_cpu_ms']['median']:g}"), '', ''),
            ('decode tok/s direct / in the node', pair(lambda r: f'{r["decode_tokens_per_s_direct"]["median"]:g} / {r["decode_tokens_per_s_node"]["median"]:g}'), '', ''),
            ('first piece: direct, ms', pair(lambda r: _fmt(r['direct_first_piece_ms'])), '', ''),
            ('first piece: through the node, ms', pair(lambda r: _fmt(r['node_first_piece_ms'])), '', ''),
            ('first piece through the node - direct first piece (median - median), ms',
             pair(lambda r: f'{r["first_piece_vs_direct_added_ms"]:+.1f}'), '', ''),
            ('**first piece through the node - first token in its engine**, ms (per request)',
             pair(lambda r: f'**{r["first_piece_added_ms"]:.2f}** ({_num(r["first_piece_after_engine_first_token_ms"]["p10"])} to {_num(r["first_piece_after_engine_first_token_ms"]["p90"])})'),
             '<= 5', f'{mark("first_piece_added_ms_640x480")} / {mark("first_piece_added_ms_1920x1080")}'),
            ('same tokens, same text, stream joined = answer', pair(lambda r: 'yes' if r['checks']['texts_identical'] and r['checks']['stream_joined_equals_answer'] and r['checks']['tokens_direct'] == r['checks']['tokens_node'] else '**no**'), '', ''),
        ]
        for name, (x, y), target, met in rows:
            lines.append(f'| {name} | {x} | {y} | {target} | {met} |')
    for key, label in (('ingestion', 'same malloc settings for both'),
                       ('ingestion_default_environment', 'default environment')):
        ing = results.get(key)
        if not ing:
            continue
        name = 'ingestion_cpu_per_frame_ratio_1920x1080' if key == 'ingestion' else None
        lines.append(f'| frame ingestion, 1920x1080 bgr8 at 30 Hz, no prompts, {label}: node / bare subscriber, CPU per '
                     f'received frame (CPU {ing["node_cpu_percent_while_streaming"]:g}% / {ing["bare_cpu_percent_while_streaming"]:g}% '
                     f'of a core, ratio {ing["cpu_ratio"]:.3f}; frames {ing["node_frames"]} / {ing["bare_frames"]} of '
                     f'~{ing["frames_published_approx"]}; page faults {ing["node_page_faults"]} / {ing["bare_page_faults"]}) | | '
                     f'**{ing["cpu_per_frame_ratio"]:.3f}** | {"<= 1.2" if name else ""} | {mark(name) if name else ""} |')
    resp = results.get('responsiveness')
    if resp:
        for label, key in (('image callback delay (stamp to callback), node', 'image_callback_delay_node'),
                           ('image callback delay, bare subscriber (same stream)', 'image_callback_delay_bare_subscriber'),
                           ('`~/reset` round trip', 'reset_round_trip'),
                           ('the same empty service in the bare subscriber, round trip', 'bare_reset_round_trip'),
                           ('empty-prompt echo round trip', 'echo_round_trip')):
            idle, busy = resp['idle'][key], resp['during_inference'][key]
            name = {'image_callback_delay_node': 'image_callback_delay_p99_ms_during_inference',
                    'reset_round_trip': 'reset_round_trip_p99_ms_during_inference'}.get(key)
            lines.append(f'| {label}, p99 ms: idle -> during inference (640x480 camera) | '
                         f'{idle.get("p99_ms", 0):.1f} -> **{busy.get("p99_ms", 0):.1f}** (median {busy.get("median_ms", 0):.1f}) | | '
                         f'{"< 20" if name else ""} | {mark(name) if name else ""} |')
    mem = results.get('memory')
    if mem:
        rss = mem['peak_rss_mb']
        lines.append(f'| peak RSS, MB: node / worker / direct script | {rss["node"]} / {rss["worker"]} / '
                     f'{rss["direct_engine_process"]} | | | |')
        by = {row['frame']: row for row in mem['max_length']}
        cells = [f'{r["max_length"]} ({r["prompt_tokens"]} + 256): KV {r["kv_cache_gib_phi3v"]:.2f} GiB, '
                 f'saves {r["kv_saved_gib_phi3v"]:.2f} GiB' for r in (by.get('640x480'), by.get('1920x1080')) if r]
        lines.append(f'| max_length for one image + 256 new tokens, vs fixed 7680 (KV {7680 * 384 / 2 ** 20:.2f} GiB '
                     f'in Phi-3-vision fp16) | {" | ".join(cells)} | | |')
    thr = results.get('throughput')
    if thr:
        for row in thr['policies']:
            lines.append(f'| answers per minute under load, busy_policy {row["policy"]} ({row["prompt_rate_hz"]:g} '
                         f'prompts/s for {row["duration_s"]:g} s, max_queue {row["max_queue"]}; {row["prompts"]} prompts, '
                         f'ERROR replies {sum(row["error_replies"].values())}; prompt to answer '
                         f'{_fmt(row["answer_latency_ms"], " ms")}) | '
                         f'{row["answers_per_minute"]} (engine alone: {thr["direct_back_to_back_answers_per_minute"]} back '
                         f'to back in one process, {thr.get("direct_pooled_answers_per_minute", "-")} from the pooled '
                         f'direct median) | | | |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='bench/results.json')
    parser.add_argument('--rounds', type=int, default=10,
                        help='rounds of the overhead measurement, each with fresh processes')
    parser.add_argument('--repeats', type=int, default=5, help='questions per side, frame size and round')
    parser.add_argument('--warmup', type=int, default=1, help='questions per side not counted, each round')
    parser.add_argument('--max-new-tokens', type=int, default=128)
    parser.add_argument('--stream-interval', type=float, default=0.02,
                        help='the node parameter stream_interval (0: one stream message per piece)')
    parser.add_argument('--flood-rate', type=float, default=10.0, help='prompts per second under load')
    parser.add_argument('--flood-s', type=float, default=20.0)
    parser.add_argument('--ingestion-s', type=float, default=20.0)
    parser.add_argument('--probe-s', type=float, default=12.0)
    parser.add_argument('--only', default=','.join(PARTS), help=f'comma-separated subset of {PARTS}')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default: a free one, as the tests take theirs)')
    parser.add_argument('--quick', action='store_true', help='fewer repeats, shorter windows (a smoke test)')
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats, args.warmup, args.flood_s, args.ingestion_s, args.probe_s = 2, 3, 1, 5.0, 5.0, 3.0
    parts = [p for p in args.only.split(',') if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f'unknown parts {sorted(unknown)}')
    domain_id = isolate_ros_domain(args.domain_id)   # a free one unless --domain-id says
    print(f'[bench] ROS domain {domain_id}', flush=True)
    dds_profile = use_large_shm_profile()
    started = time.monotonic()
    results: Dict[str, object] = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'machine': machine_description(), 'model': 'tiny random-weight phi3v (make_tiny_model, seed 0)',
        'rmw': os.environ.get('RMW_IMPLEMENTATION', 'default (rmw_fastrtps_cpp)'), 'dds_profile': dds_profile,
        'domain_id': domain_id,
        'settings': {'max_new_tokens': args.max_new_tokens, 'greedy': True, 'rounds': args.rounds,
                     'repeats': args.repeats,
                     'stream_interval': args.stream_interval,
                     'warmup': args.warmup, 'quick': args.quick}}
    with tempfile.TemporaryDirectory(prefix='phi3v_bench_') as workdir:
        models = _models(workdir)
        if 'overhead' in parts or 'throughput' in parts:
            peer = Peer()
            try:
                if 'overhead' in parts:
                    run_overhead(models['short'], args, results, peer)
                if 'throughput' in parts:
                    run_throughput(models['short'], args, results, peer)
            finally:
                peer.close()
        if 'ingestion' in parts:
            print('[bench] frame ingestion, same malloc settings for both', flush=True)
            results['ingestion'] = ingestion.measure(models['short'], duration_s=args.ingestion_s,
                                                     env=ingestion.ALLOCATOR_NEUTRAL)
            print('[bench] frame ingestion, default environment', flush=True)
            results['ingestion_default_environment'] = ingestion.measure(models['short'],
                                                                         duration_s=args.ingestion_s)
        if 'responsiveness' in parts:
            print('[bench] responsiveness during inference', flush=True)
            results['responsiveness'] = responsiveness.measure(models['long'], probe_s=args.probe_s,
                                                               stream_interval=args.stream_interval)
    if 'startup' in parts:
        print('[bench] start-up of the ask client', flush=True)
        results['startup'] = startup.measure(5 if args.quick else 15)
        results['ask_help_median_ms'] = results['startup']['ask_help']['median']
    results['targets'] = targets(results)
    results['duration_s'] = round(time.monotonic() - started, 1)
    results['machine']['load_average_at_end'] = [round(x, 2) for x in os.getloadavg()]
    results['table_markdown'] = table(results)
    if 'startup' in results:
        results['table_markdown'] += '\n\n' + startup.table(results['startup'])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(results, f, indent=2)
        f.write('\n')
    print()
    print(f'{results["date"]}, {results["machine"]["cpu"]}, {results["machine"]["cores"]} cores, '
          f'load average at start {results["machine"]["load_average_at_start"]}, at end '
          f'{results["machine"]["load_average_at_end"]}, {results["duration_s"]} s')
    print(results['table_markdown'])
    missed = [name for name, check in results['targets'].items() if not check['met']]
    print(f'\ntargets missed: {", ".join(missed)}' if missed else '\nall targets met')
    print(f'numbers written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
