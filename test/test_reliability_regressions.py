"""
vision_qa_node as its own process, under the faults that used to freeze, crash or stop it.

A ~/cancel flood at a stopped worker, a /dev/shm too small for a frame, SIGTERM to the process
group mid-answer, Ctrl-C at any moment of the start, a bad topic name, and an answer whose KV
cache does not fit under the container's memory limit.
"""
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time

import psutil
import pytest
from reliability_helpers import alive, BASE, ERROR, NodePeer, wait_for_worker, worker_of
from ros_harness import entry_point, isolate_ros_domain, NodeProcess, wait_until

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')

TEXT_ONLY = {'allow_text_only': True, 'image_wait_timeout': 0.0}
LONG = 20000


@pytest.fixture(autouse=True)
def ros_domain():
    isolate_ros_domain()   # a new domain per test: each test has its own node


@pytest.fixture
def peer():
    ros_peer = NodePeer()
    yield ros_peer
    ros_peer.close()


def start_long_answer(peer):
    count = peer.answer_count()
    peer.set_parameters(max_new_tokens=LONG)
    peer.ask('Tell me everything.')
    assert peer.wait_for(lambda: len(peer.pieces) > 0, 30), 'the answer did not start streaming'
    return count


def stop_within(node, seconds, signum=signal.SIGINT):
    node.send_signal(signum)
    started = time.monotonic()
    code = node.process.wait(seconds + 10)
    took = time.monotonic() - started
    assert code == 0 and took < seconds, (code, took, node.output())
    return took


def test_a_cancel_flood_at_a_stopped_worker_leaves_the_node_responsive(tiny_model, peer):
    node = NodeProcess({'model_path': tiny_model, **BASE, **TEXT_ONLY, 'stall_timeout': 4.0})
    try:
        peer.wait_connected()
        peer.wait_ready()
        count = start_long_answer(peer)
        worker = worker_of(node)
        worker.send_signal(signal.SIGSTOP)       # not reading its pipe, like a wedged driver
        from rclpy.qos import QoSProfile
        from std_srvs.srv import Trigger
        flood_client = peer.node.create_client(Trigger, '/vision_qa/cancel',
                                               qos_profile=QoSProfile(depth=1000))
        assert flood_client.wait_for_service(timeout_sec=10)
        answered = threading.Semaphore(0)
        futures = [flood_client.call_async(Trigger.Request()) for _ in range(500)]
        for future in futures:
            future.add_done_callback(lambda future: answered.release())
        deadline = time.monotonic() + 30
        for done in range(len(futures)):
            assert answered.acquire(timeout=max(0.0, deadline - time.monotonic())), (
                f'~/cancel answered only {done} of {len(futures)} calls')
        assert all(future.result().success for future in futures[:1])
        # the executor is free: another service, and /diagnostics, answer
        assert peer.trigger(peer.reset_client).success
        assert peer.wait_diagnostic(lambda values: True, 5)
        reply = peer.wait_answers(count + 1, timeout=15)[count]
        assert reply.startswith(ERROR) and 'stall_timeout (4 s)' in reply, reply
    finally:
        if alive(worker):
            worker.send_signal(signal.SIGCONT)
    stop_within(node, 5)


def test_sigterm_to_the_process_group_mid_answer_replies_shutting_down(tiny_model, peer):
    node = NodeProcess({'model_path': tiny_model, **BASE, **TEXT_ONLY})
    peer.wait_connected()
    peer.wait_ready()
    count = start_long_answer(peer)
    peer.ask('Waiting in the queue')
    os.killpg(node.process.pid, signal.SIGTERM)  # systemd, docker stop, launch
    started = time.monotonic()
    assert node.process.wait(15) == 0, node.output()
    assert time.monotonic() - started < 5
    replies = peer.wait_answers(count + 2, timeout=5)[count:]
    assert replies == [ERROR + 'the node is shutting down.'] * 2, replies
    output = node.output()
    assert 'restarting it in' not in output and 'the model failed' not in output, output
    assert 'SIGTERM: stopping' in output


def test_shutdown_is_bounded_with_a_wedged_worker(tiny_model, peer):
    node = NodeProcess({'model_path': tiny_model, **BASE, **TEXT_ONLY, 'stall_timeout': 600.0})
    peer.wait_connected()
    peer.wait_ready()
    count = start_long_answer(peer)
    worker = worker_of(node)
    worker.send_signal(signal.SIGSTOP)          # wedged: it will never answer "shutdown"
    try:
        took = stop_within(node, 8)             # asked, then killed after 2 s
    finally:
        if alive(worker):
            worker.send_signal(signal.SIGCONT)
    assert took >= 2.0, took                    # it did wait for an orderly stop first
    assert wait_until(lambda: not alive(worker), 5)
    assert peer.wait_answers(count + 1, timeout=5)[count] == ERROR + 'the node is shutting down.'


@pytest.mark.parametrize('moment', ['constructed', 'worker started', 'loading'])
def test_ctrl_c_at_any_moment_of_the_start_exits_0_without_a_traceback(tiny_model, moment):
    node = NodeProcess({'model_path': tiny_model, **BASE, 'warmup': True})
    if moment == 'constructed':
        node.wait_for_line('listening on')
    else:
        wait_for_worker(node, timeout=60)
        if moment == 'loading':
            time.sleep(0.5)
    os.killpg(node.process.pid, signal.SIGINT)   # the terminal's Ctrl-C
    started = time.monotonic()
    code = node.process.wait(15)
    assert code == 0 and time.monotonic() - started < 5, (code, node.output())
    assert 'Traceback' not in node.output(), node.output()


def test_a_bad_topic_name_is_one_line_and_exit_code_2(tiny_model):
    result = subprocess.run(entry_point('vision_qa_node')
                            + ['--ros-args', '-p', f'model_path:={tiny_model}',
                               '-p', 'image_topic:=bad topic'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert ("vision_qa_node: image_topic 'bad topic' is not a valid topic name: "
            'failed to resolve name: topic name must not contain characters') in result.stderr
    assert 'Traceback' not in result.stderr


def can_mount_private_tmpfs():
    if shutil.which('unshare') is None:
        return False
    probe = subprocess.run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
                            'mount -t tmpfs -o size=1m tmpfs /dev/shm'],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


SMALL_SHM_RUN = """
mount -t tmpfs -o size=16m tmpfs /dev/shm || exit 90
$NODE --ros-args -p model_path:=$MODEL -p provider:=cpu -p warmup:=false \
    -p max_new_tokens:=4 -p image_reliability:=reliable -p image_wait_timeout:=30.0 \
    >"$OUT/node.log" 2>&1 &
node=$!
$CAMERA --width 3840 --height 2160 --rate 2 >"$OUT/camera.log" 2>&1 &
camera=$!
$ASK 'What does the 4K camera see?' --timeout 120 --connect-timeout 60 >"$OUT/ask.log" 2>&1
echo $? >"$OUT/ask.rc"
kill -INT $camera $node
wait $node
echo $? >"$OUT/node.rc"
wait $camera
echo $? >"$OUT/camera.rc"
"""


def test_a_frame_larger_than_the_free_dev_shm_goes_through_the_pipe(tiny_model, tmp_path):
    """
    Docker's /dev/shm is 64 MB; here 16 MiB and a 3840x2160 frame used to SIGBUS the node.

    Node, camera and client run in one private mount namespace with that /dev/shm (processes with
    different /dev/shm cannot talk over Fast DDS's shared-memory transport), over UDP.
    """
    if not can_mount_private_tmpfs():
        pytest.skip('needs root and unshare to give the node a 16 MiB /dev/shm')
    env = dict(os.environ, FASTDDS_BUILTIN_TRANSPORTS='UDPv4', OUT=str(tmp_path),
               MODEL=tiny_model,
               NODE=' '.join(shlex.quote(part) for part in entry_point('vision_qa_node')),
               CAMERA=' '.join(shlex.quote(part) for part in entry_point('synthetic_camera')),
               ASK=' '.join(shlex.quote(part) for part in entry_point('ask')))
    run = subprocess.run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
                          SMALL_SHM_RUN], env=env, capture_output=True, text=True, timeout=240,
                         start_new_session=True)
    # the script's own status is the camera's: shown, not asserted (the node is under test here)
    logs = {name: (tmp_path / name).read_text() if (tmp_path / name).exists() else ''
            for name in ('node.log', 'ask.log', 'camera.log', 'ask.rc', 'node.rc', 'camera.rc')}
    assert logs['camera.rc'].strip(), (run.returncode, run.stderr, logs)   # it ran to the end
    assert logs['ask.rc'].strip() == '0', logs       # answered, not an ERROR reply
    assert logs['node.rc'].strip() == '0', logs      # stopped by SIGINT, not killed by SIGBUS
    assert logs['node.log'].count('/dev/shm has no room for a') == 1, logs['node.log']
    assert 'through the pipe from now on' in logs['node.log']
    assert 'inference worker' not in logs['node.log'], logs['node.log']   # never restarted


# -- the memory guard under a container's memory limit (a memory cgroup) ------------------------

class MemoryCgroup:
    """A memory cgroup (v1 or v2) to put the node into; creating it needs root."""

    def __init__(self, name):
        v2 = '/sys/fs/cgroup/cgroup.controllers'
        if os.path.exists(v2) and 'memory' in open(v2).read().split():
            self.path, self.limit_file, self.usage_file = (
                f'/sys/fs/cgroup/{name}', 'memory.max', 'memory.current')
        else:
            self.path, self.limit_file, self.usage_file = (
                f'/sys/fs/cgroup/memory/{name}', 'memory.limit_in_bytes', 'memory.usage_in_bytes')
        os.mkdir(self.path)

    def add(self, pid):
        with open(os.path.join(self.path, 'cgroup.procs'), 'w') as f:
            f.write(str(pid))

    def usage(self):
        with open(os.path.join(self.path, self.usage_file)) as f:
            return int(f.read())

    def limit(self, nbytes):
        with open(os.path.join(self.path, self.limit_file), 'w') as f:
            f.write(str(nbytes))

    def remove(self):
        if wait_until(lambda: not open(os.path.join(self.path, 'cgroup.procs')).read().strip(),
                      10):
            os.rmdir(self.path)


@pytest.fixture
def memory_cgroup():
    try:
        cgroup = MemoryCgroup(f'phi3v_ros_test_{os.getpid()}')
    except OSError as exc:
        pytest.skip(f'cannot create a memory cgroup here ({exc}): needs root')
    yield cgroup
    cgroup.remove()


@pytest.fixture(scope='module')
def memory_hungry_model(tmp_path_factory):
    """Write the tiny model with 48 layers: 12 KiB of KV cache per token, 384 MiB at 32k."""
    from phi3v_ros.tools.make_tiny_model import make_tiny_model
    return str(make_tiny_model(tmp_path_factory.mktemp('hungry') / 'model', num_layers=48,
                               context_length=32768))


def test_an_answer_whose_kv_cache_does_not_fit_the_memory_limit_is_refused(
        memory_hungry_model, memory_cgroup, peer):
    node = NodeProcess({'model_path': memory_hungry_model, **BASE, **TEXT_ONLY})
    memory_cgroup.add(node.process.pid)          # before it starts its worker
    try:
        peer.wait_connected()
        peer.wait_ready()
        worker = worker_of(node)
        headroom = 150 * 2 ** 20
        memory_cgroup.limit(memory_cgroup.usage() + headroom)
        peer.set_parameters(max_new_tokens=30000)   # 30,000 x 12 KiB = 352 MiB of cache
        reply = peer.ask_and_wait('Tell me a very long story.', timeout=60)
        assert reply.startswith(ERROR + 'the model failed: not enough memory for this answer: '
                                        'its KV cache takes about'), reply
        assert 'under the memory cgroup limit' in reply and 'lower max_new_tokens' in reply
        assert alive(worker) and peer.latest_diagnostic('worker_restarts') == '0'
        peer.set_parameters(max_new_tokens=4)
        assert not peer.ask_and_wait('A short one?').startswith(ERROR)
        assert psutil.Process(node.process.pid).is_running()
    finally:
        memory_cgroup.limit(-1 if memory_cgroup.limit_file.endswith('bytes') else 'max')
    stop_within(node, 5)
