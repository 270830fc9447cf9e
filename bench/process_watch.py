"""
What the soaks watch of the node's processes: resident memory, the worker, shared-memory blocks,
stopping a process group; and the statistics of their verdicts (percentiles, growth per hour).

Shared by the plain soak (bench/soak.py) and its fault mode (bench/faults/); imports neither.
"""
from __future__ import annotations

import glob
import os
import signal
import statistics
import subprocess
import sys
from typing import List, Optional

import psutil


def percentile(values: List[float], q: float) -> Optional[float]:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def slope_per_hour(times: List[float], values: List[float]) -> Optional[float]:
    """Least-squares slope of values over times (seconds), per hour."""
    if len(times) < 3:
        return None
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    var = sum((t - mean_t) ** 2 for t in times)
    if var == 0:
        return None
    return 3600.0 * sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values)) / var


def shm_blocks() -> List[str]:
    return sorted(os.path.basename(p) for p in glob.glob('/dev/shm/psm_*'))


def python_module(module: str) -> List[str]:
    return [sys.executable, '-m', module]


def rss_mb(process: Optional[psutil.Process]) -> Optional[float]:
    try:
        return None if process is None else process.memory_info().rss / 2 ** 20
    except psutil.Error:
        return None


def worker_of(node: psutil.Process) -> Optional[psutil.Process]:
    """Return the node's live worker process (`python -m phi3v_ros.engine.worker_launch`), or None."""
    try:
        children = node.children()
    except psutil.Error:
        return None
    for child in children:
        try:
            command = ' '.join(child.cmdline())
            if 'phi3v_ros.engine.worker_launch' in command and child.status() != psutil.STATUS_ZOMBIE:
                return child
        except psutil.Error:
            continue
    return None


def stop(process: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    return process.returncode


def memory_verdict(samples: List[dict], key: str, warmup_s: float, max_growth_mb: float) -> dict:
    points = [(s['t_s'], s[key]) for s in samples if s['t_s'] >= warmup_s and s[key] is not None]
    if len(points) < 5:
        return {'verdict': 'too few samples', 'samples': len(points)}
    fifth = max(1, len(points) // 5)
    first = statistics.median(v for _, v in points[:fifth])
    last = statistics.median(v for _, v in points[-fifth:])
    slope = slope_per_hour([t for t, _ in points], [v for _, v in points])
    span_h = (points[-1][0] - points[0][0]) / 3600.0
    fitted_growth = (slope or 0.0) * span_h
    growth = last - first
    return {
        'first_fifth_median_mb': round(first, 1), 'last_fifth_median_mb': round(last, 1),
        'growth_mb': round(growth, 2), 'slope_mb_per_hour': None if slope is None else round(slope, 2),
        'min_mb': round(min(v for _, v in points), 1), 'max_mb': round(max(v for _, v in points), 1),
        'verdict': 'flat' if growth <= max_growth_mb and fitted_growth <= max_growth_mb else 'growing',
    }


def rounded(value: Optional[float], digits: int = 3) -> Optional[float]:
    return None if value is None else round(value, digits)
