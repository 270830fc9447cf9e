"""The memory guard: KV cache sizes, free memory from /proc/meminfo and cgroup v1/v2 files."""
from phi3v_ros.base.errors import EngineError
from phi3v_ros.engine.memory_guard import (cgroup_room_bytes, kv_bytes_per_token,
                                           mem_available_bytes, MemoryGuard)
import pytest

PHI3V_DECODER = {'num_hidden_layers': 32, 'num_attention_heads': 32, 'num_key_value_heads': 32,
                 'head_size': 96, 'hidden_size': 3072}
MIB = 2 ** 20


def test_phi3v_kv_cache_is_384_kib_per_token_in_fp16():
    assert kv_bytes_per_token(PHI3V_DECODER, 2) == 384 * 1024
    # without head_size, hidden_size / heads
    assert kv_bytes_per_token({k: v for k, v in PHI3V_DECODER.items() if k != 'head_size'},
                              2) == 384 * 1024


def test_a_cache_that_does_not_fit_is_refused_with_the_numbers():
    guard = MemoryGuard(384 * 1024, 'cpu', lambda: (500 * MIB, 'MemAvailable'))
    guard.check(1000)                        # 375 MiB (x 1.25 = 469) fits in 500
    with pytest.raises(EngineError) as caught:
        guard.check(2209)
    text = str(caught.value)
    assert 'about 828 MiB (2209 tokens x 384.0 KiB)' in text
    assert 'only 500 MiB is free (MemAvailable)' in text and 'lower max_new_tokens' in text


def test_on_cuda_the_largest_cache_so_far_counts_as_free_again():
    free = [(100 * MIB, 'free on GPU 0 (NVML)')]
    guard = MemoryGuard(MIB, 'cuda', lambda: free[0])
    guard.check(60)
    guard.allocated(60)                      # now held by onnxruntime's arena
    free[0] = (10 * MIB, 'free on GPU 0 (NVML)')
    guard.check(60)                          # the arena has it
    guard.check(64)                          # 4 MiB more (x 1.25) fits in 10
    with pytest.raises(EngineError):
        guard.check(80)
    cpu = MemoryGuard(MIB, 'cpu', lambda: (10 * MIB, 'MemAvailable'))
    cpu.allocated(60)                        # freed back to the system on the CPU
    with pytest.raises(EngineError):
        cpu.check(60)


def test_unknown_free_memory_lets_the_request_through():
    MemoryGuard(MIB, 'cuda', lambda: None).check(10 ** 6)


def test_mem_available(tmp_path):
    meminfo = tmp_path / 'meminfo'
    meminfo.write_text('MemTotal:  1000 kB\nMemFree:  10 kB\nMemAvailable:  512 kB\n')
    assert mem_available_bytes(str(meminfo)) == 512 * 1024
    assert mem_available_bytes(str(tmp_path / 'missing')) is None


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_room_is_the_tightest_limit_up_the_tree(tmp_path):
    root = tmp_path / 'cgroup'
    write(root / 'robot' / 'memory.max', f'{1000 * MIB}\n')
    write(root / 'robot' / 'memory.current', f'{200 * MIB}\n')
    write(root / 'robot' / 'memory.stat', 'anon 1\ninactive_file 0\n')
    write(root / 'robot' / 'node' / 'memory.max', 'max\n')
    write(root / 'robot' / 'node' / 'memory.current', f'{150 * MIB}\n')
    write(root / 'robot' / 'node' / 'memory.stat', f'inactive_file {50 * MIB}\n')
    proc = tmp_path / 'proc_cgroup'
    write(proc, '0::/robot/node\n')
    assert cgroup_room_bytes(str(proc), str(root)) == 800 * MIB
    write(root / 'robot' / 'node' / 'memory.max', f'{300 * MIB}\n')
    assert cgroup_room_bytes(str(proc), str(root)) == (300 - 150 + 50) * MIB


def test_cgroup_v1_inside_a_container_uses_the_visible_part_of_the_path(tmp_path):
    root = tmp_path / 'cgroup'
    memory = root / 'memory'
    write(memory / 'memory.limit_in_bytes', '9223372036854771712\n')   # unlimited
    write(memory / 'memory.usage_in_bytes', f'{5000 * MIB}\n')
    write(memory / 'memory.stat', 'total_inactive_file 0\n')
    write(memory / 'test' / 'memory.limit_in_bytes', f'{400 * MIB}\n')
    write(memory / 'test' / 'memory.usage_in_bytes', f'{300 * MIB}\n')
    write(memory / 'test' / 'memory.stat', f'cache 1\ntotal_inactive_file {20 * MIB}\n')
    proc = tmp_path / 'proc_cgroup'
    # the host's path: /docker/<id>/test; the container sees only .../test under its mount
    write(proc, '12:pids:/docker/abc\n4:memory:/docker/abc/test\n1:name=systemd:/docker/abc\n')
    assert cgroup_room_bytes(str(proc), str(root)) == 120 * MIB


def test_no_cgroup_limit_is_none(tmp_path):
    proc = tmp_path / 'proc_cgroup'
    write(proc, '0::/\n')
    write(tmp_path / 'cgroup' / 'memory.stat', 'anon 1\n')
    assert cgroup_room_bytes(str(proc), str(tmp_path / 'cgroup')) is None
