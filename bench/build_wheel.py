"""What a real build_genai_wheel run costs: wall time, CPU time, peak memory, the wheel's size.

    python -m bench.build_wheel [--out bench/build_wheel_results.json] -- BUILDER-ARGUMENTS

Runs ``python -m phi3v_ros.tools.build_genai_wheel BUILDER-ARGUMENTS`` as a child, prints its
output, and samples once a second the summed resident memory of the child's whole process tree
(the compilers included) and the machine's used memory (MemTotal - MemAvailable) above what it
was at the start. CPU time is the children's user + system time. Run it on a quiet machine: other
work inflates the wall time and the machine-wide memory figure (the process-tree figure is the
build's own). The numbers, with the machine's CPU model and count, are written to the results
file; docs/jetson.md gives the measured ones and the Orin estimate made from them.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import resource
import subprocess
import sys
import threading
import time
from typing import Dict, List

MIB = 1024 * 1024


def _children(pid: int) -> List[int]:
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def tree_rss(pid: int) -> int:
    """Return the summed VmRSS (bytes) of pid and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f'/proc/{current}/status') as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        todo += _children(current)
    return total


def used_memory() -> int:
    fields = {}
    with open('/proc/meminfo') as f:
        for line in f:
            name, value = line.split(':', 1)
            fields[name] = int(value.split()[0]) * 1024
    return fields['MemTotal'] - fields.get('MemAvailable', fields['MemFree'])


class Sampler(threading.Thread):
    """Keeps the peaks until stop is set (a bounded wait each second)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.baseline = used_memory()
        self.peak_tree = self.peak_used = 0

    def run(self) -> None:
        try:
            while not self.stop.wait(1.0):
                self.peak_tree = max(self.peak_tree, tree_rss(self.pid))
                self.peak_used = max(self.peak_used, used_memory() - self.baseline)
        except Exception as exc:      # a sampling failure must not hang or hide the build
            print(f'memory sampling stopped: {exc}', file=sys.stderr)


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return 'unknown'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='bench/build_wheel_results.json')
    parser.add_argument('builder_args', nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    builder_args = [a for a in args.builder_args if a != '--']
    command = [sys.executable, '-m', 'phi3v_ros.tools.build_genai_wheel', *builder_args]
    start = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(child.pid)
    sampler.start()
    wheel = None
    for line in child.stdout:
        print(line, end='', flush=True)
        if '/dist/' in line and line.strip().endswith(tuple('0123456789abcdef')) and \
                '.whl' in line:
            wheel = line.split()[0]
    status = child.wait()
    wall = time.monotonic() - start
    sampler.stop.set()
    sampler.join(timeout=5)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: Dict[str, object] = {
        'command': ' '.join(['python3 -m phi3v_ros.tools.build_genai_wheel', *builder_args]),
        'exit_status': status, 'wall_s': round(wall, 1),
        'cpu_s': round(usage.ru_utime + usage.ru_stime, 1),
        'peak_process_tree_rss_mib': round(sampler.peak_tree / MIB),
        'peak_largest_process_rss_mib': round(usage.ru_maxrss / 1024),
        'peak_machine_used_above_start_mib': round(sampler.peak_used / MIB),
        'wheel': wheel, 'wheel_bytes': os.path.getsize(wheel) if wheel else None,
        'cpu': cpu_model(), 'cpus': os.cpu_count(),
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
    print()
    print(f'{"exit":>5} {"wall":>9} {"CPU":>9} {"tree RSS":>9} {"largest":>9} {"machine":>9} '
          f'{"wheel":>9}')
    size = f'{result["wheel_bytes"] / MIB:.1f} MiB' if wheel else '-'
    print(f'{status:>5} {wall / 60:>7.1f} m {result["cpu_s"] / 60:>7.1f} m '
          f'{result["peak_process_tree_rss_mib"]:>5} MiB {result["peak_largest_process_rss_mib"]:>5}'
          f' MiB {result["peak_machine_used_above_start_mib"]:>5} MiB {size:>9}')
    Path(args.out).write_text(json.dumps(result, indent=1) + '\n')
    return status


if __name__ == '__main__':
    sys.exit(main())
