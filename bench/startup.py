"""Start-up time of the `ask` client: `ask --help` wall time, median of several runs.

    python -m bench.startup [--runs 15] [--out bench/results.json]

`ask` used to import the engine stack (OpenCV, numpy) for one constant and took seconds to print its
help; it now imports neither that nor rclpy before its arguments are parsed. Two references are
measured the same way: the bare interpreter (`python -c pass`) and the imports `ask` had before (rclpy's
node, std_msgs and phi3v_ros.core.vision_qa with the engine stack). Standalone, the numbers are merged into the results file (keys
`startup` and `ask_help_median_ms`); `make bench` runs it as its part `startup`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Dict, List

from bench.common import REPO, entry_point, merge_results, summary

CASES = (
    ('ask_help', '`ask --help`', None),
    ('bare_interpreter', 'bare interpreter (`python -c pass`)', [sys.executable, '-c', 'pass']),
    ('imports_before', 'the imports `ask` had before (rclpy.node, std_msgs.msg, phi3v_ros.core.vision_qa)',
     [sys.executable, '-c', 'import rclpy.node, rclpy.utilities, std_msgs.msg, phi3v_ros.core.vision_qa']),
)


def _wall_s(command: List[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(runs: int = 15) -> Dict[str, object]:
    """Wall time of each case, interleaved (one run of each in turn) so that load hits all alike."""
    commands = {key: command or entry_point('ask', 'phi3v_ros.client.ask') + ['--help'] for key, _, command in CASES}
    for command in commands.values():   # once each, not counted: page cache, .pyc files
        _wall_s(command)
    times: Dict[str, List[float]] = {key: [] for key in commands}
    for _ in range(runs):
        for key, command in commands.items():
            times[key].append(_wall_s(command))
    result: Dict[str, object] = {key: summary(values, scale=1e3, digits=1) for key, values in times.items()}
    result['command'] = ' '.join(commands['ask_help'])
    result['runs'] = runs
    return result


def table(startup: Dict[str, object]) -> str:
    lines = [f'| start-up, wall ms ({startup["runs"]} runs each) | median | p10 to p90 |', '|---|---|---|']
    for key, label, _ in CASES:
        row = startup[key]
        lines.append(f'| {label} | **{row["median"]:g}** | {row["p10"]:g} to {row["p90"]:g} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=15)
    parser.add_argument('--out', default='bench/results.json',
                        help='results file to merge the numbers into (created if missing)')
    args = parser.parse_args(argv)
    startup = measure(args.runs)
    merge_results(args.out, lambda results: results.update(
        startup=startup, ask_help_median_ms=startup['ask_help']['median']))
    print(table(startup))
    print(f'numbers written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
