"""
The memory guard: does the next answer's KV cache fit in the memory that is free.

With past_present_share_buffer (the published CUDA models, the tiny model) onnxruntime-genai
allocates the key/value cache for the request's whole max_length at once: Phi-3-vision's is
384 KiB per token in fp16, so 2,200 tokens take about 830 MiB. On a Jetson, CPU and GPU share the
board's memory; when it cannot hold the cache, the Linux OOM killer (or a CUDA out-of-memory abort)
ends the worker in the middle of the answer. The guard compares the cache's size with the memory
that is free before the request starts and refuses the request with a sentence instead.

Where "free" is read:
- CPU provider, or CUDA on a Jetson (integrated GPU): /proc/meminfo MemAvailable, and the room
  left under every memory cgroup limit of this process (a container's `--memory`), v1 or v2;
- CUDA on a discrete GPU: NVML's free memory of the device (no check where NVML is missing).
The check is an estimate: the cache plus 25 %; what the vision encoder and the prefill need on top
is not counted. On CUDA, onnxruntime keeps freed device memory in its arena for the next request,
so the largest cache allocated so far counts as available again.
"""
from __future__ import annotations

import ctypes
import os
from typing import Callable, Optional, Tuple

from phi3v_ros.base.errors import EngineError

SLACK = 1.25
# Bytes per cached value: the published CUDA models keep the cache in fp16, CPU models in fp32.
BYTES_PER_VALUE = {'cuda': 2, 'cpu': 4}
_CGROUP_UNLIMITED = 1 << 60
MIB = 2 ** 20


def kv_bytes_per_token(decoder: dict, bytes_per_value: int) -> int:
    """Return what one token of KV cache takes: keys and values of every layer."""
    layers = int(decoder['num_hidden_layers'])
    heads = int(decoder.get('num_attention_heads', 1))
    kv_heads = int(decoder.get('num_key_value_heads', heads))
    head_size = int(decoder.get('head_size') or int(decoder['hidden_size']) // heads)
    return 2 * layers * kv_heads * head_size * bytes_per_value


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path, encoding='ascii') as f:
            text = f.read().strip()
    except (OSError, ValueError):
        return None
    if text == 'max':
        return _CGROUP_UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: str, key: str) -> int:
    try:
        with open(path, encoding='ascii') as f:
            for line in f:
                name, _, value = line.partition(' ')
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dirs(mount: str, path: str):
    """Yield this process's cgroup folder under mount, then each parent up to the mount."""
    parts = [part for part in path.strip('/').split('/') if part]
    # Inside a container the path can name the host's hierarchy while the mount shows only the
    # container's part of it: use the longest tail of the path that exists under the mount.
    for start in range(len(parts) + 1):
        leaf = os.path.join(mount, *parts[start:])
        if os.path.isdir(leaf):
            break
    else:
        return
    while True:
        yield leaf
        if os.path.samefile(leaf, mount):
            return
        leaf = os.path.dirname(leaf)


def cgroup_room_bytes(proc_cgroup: str = '/proc/self/cgroup',
                      root: str = '/sys/fs/cgroup') -> Optional[int]:
    """Return the smallest room left under this process's memory cgroup limits (None: no limit)."""
    try:
        with open(proc_cgroup, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(':', 2)
        if controllers == '':        # cgroup v2
            for folder in _cgroup_dirs(root, path):
                limit = _read_int(os.path.join(folder, 'memory.max'))
                usage = _read_int(os.path.join(folder, 'memory.current'))
                if limit is not None and usage is not None and limit < _CGROUP_UNLIMITED:
                    cache = _stat_value(os.path.join(folder, 'memory.stat'), 'inactive_file')
                    rooms.append(limit - usage + cache)
        elif 'memory' in controllers.split(','):   # cgroup v1
            for folder in _cgroup_dirs(os.path.join(root, 'memory'), path):
                limit = _read_int(os.path.join(folder, 'memory.limit_in_bytes'))
                usage = _read_int(os.path.join(folder, 'memory.usage_in_bytes'))
                if limit is not None and usage is not None and limit < _CGROUP_UNLIMITED:
                    cache = _stat_value(os.path.join(folder, 'memory.stat'),
                                        'total_inactive_file')
                    rooms.append(limit - usage + cache)
    return max(0, min(rooms)) if rooms else None


def mem_available_bytes(meminfo: str = '/proc/meminfo') -> Optional[int]:
    try:
        with open(meminfo, encoding='ascii') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_free() -> Optional[Tuple[int, str]]:
    """Return (bytes, where) of host memory free for this process, or None where unknown."""
    available = mem_available_bytes()
    room = cgroup_room_bytes()
    if room is not None and (available is None or room < available):
        return room, 'under the memory cgroup limit'
    if available is not None:
        return available, 'MemAvailable'
    return None


def is_integrated_gpu() -> bool:
    """Return True on a Jetson: its GPU uses the board's memory."""
    if os.path.exists('/etc/nv_tegra_release'):
        return True
    try:
        with open('/proc/device-tree/compatible', 'rb') as f:
            return b'nvidia,tegra' in f.read()
    except OSError:
        return False


class _NvmlMemory(ctypes.Structure):
    _fields_ = [('total', ctypes.c_ulonglong), ('free', ctypes.c_ulonglong),
                ('used', ctypes.c_ulonglong)]


def gpu_free(device_id: int) -> Optional[Tuple[int, str]]:
    """Return (bytes, where) free on the CUDA device (NVML), or None where NVML is missing."""
    try:
        nvml = ctypes.CDLL('libnvidia-ml.so.1')
        if nvml.nvmlInit_v2() != 0:
            return None
        handle = ctypes.c_void_p()
        if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(device_id), ctypes.byref(handle)):
            return None
        memory = _NvmlMemory()
        if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(memory.free), f'free on GPU {device_id} (NVML)'


class MemoryGuard:
    """Refuse a request whose KV cache does not fit in the free memory (see the module's text)."""

    def __init__(self, per_token_bytes: int, provider: str,
                 free: Callable[[], Optional[Tuple[int, str]]]) -> None:
        self.per_token_bytes = per_token_bytes
        self._arena_keeps = provider == 'cuda'
        self._largest = 0
        self._free = free

    @classmethod
    def for_model(cls, decoder: dict, provider: str, device_id: int = 0) -> 'MemoryGuard':
        """Return the guard for a genai_config decoder section run with this provider."""
        if provider == 'cuda' and not is_integrated_gpu():
            def free():
                return gpu_free(device_id)
        else:
            free = host_free
        try:
            per_token = kv_bytes_per_token(decoder, BYTES_PER_VALUE.get(provider, 4))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            per_token = 0    # a config without the decoder's dimensions: nothing to check against
        return cls(per_token, provider, free)

    def kv_bytes(self, max_length: int) -> int:
        return self.per_token_bytes * max_length

    def check(self, max_length: int) -> None:
        """Raise EngineError when a cache of max_length tokens does not fit."""
        needed = self.kv_bytes(max_length)
        reused = self._largest if self._arena_keeps else 0
        extra = needed - reused
        if extra <= 0:
            return
        free = self._free()
        if free is None:
            return
        free_bytes, where = free
        if extra * SLACK > free_bytes:
            raise EngineError(
                f'not enough memory for this answer: its KV cache takes about '
                f'{needed / MIB:.0f} MiB ({max_length} tokens x '
                f'{self.per_token_bytes / 1024:.1f} KiB), and only {free_bytes / MIB:.0f} MiB '
                f'is free ({where}); lower max_new_tokens, history_turns or follow_up_tokens, or '
                'free memory')

    def allocated(self, max_length: int) -> None:
        """Remember the largest cache allocated so far (on CUDA the arena keeps it)."""
        self._largest = max(self._largest, self.kv_bytes(max_length))
