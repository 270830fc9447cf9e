"""
The one way tests, benchmarks and soaks take a ROS domain: held, never shared, never one in use.

Real processes: two runs started at once, and a real DDS participant occupying a domain.
"""
import os
import subprocess
import sys

from phi3v_ros.tools import ros_domain
import pytest

HOLD = ('import sys\n'
        'from phi3v_ros.tools.ros_domain import isolate_ros_domain\n'
        'candidates = tuple(int(c) for c in sys.argv[1].split(","))\n'
        'try:\n'
        '    print(isolate_ros_domain(candidates=candidates), flush=True)\n'
        'except RuntimeError as exc:\n'
        '    print("none:", exc, flush=True)\n'
        'sys.stdin.read()\n')     # holds the domain until the test closes its stdin


@pytest.fixture(autouse=True)
def keep_environment(monkeypatch):
    """isolate_ros_domain writes os.environ: give it back, and the lock, after each test."""
    for name in ('ROS_DOMAIN_ID', 'ROS_LOCALHOST_ONLY', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                 ros_domain.DOMAIN_ID_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    yield
    ros_domain.release_domain()


def free_domains(count):
    """Return count domain ids that no run holds and no participant uses now."""
    found = []
    for domain_id in reversed(ros_domain.SAFE_DOMAIN_IDS):
        fd = ros_domain._try_lock(domain_id)
        if fd is not None:
            os.close(fd)
            if not ros_domain.domain_in_use(domain_id):
                found.append(domain_id)
        if len(found) == count:
            return found
    pytest.skip('not enough free ROS domains on this machine')


def start_holder(candidates):
    process = subprocess.Popen([sys.executable, '-c', HOLD, ','.join(map(str, candidates))],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_runs_started_at_once_get_different_domains_and_a_third_none():
    pair = free_domains(2)
    holders = [start_holder(pair) for _ in range(3)]
    try:
        taken = [line for _, line in holders]
        assert sorted(taken[:2]) == sorted(map(str, pair)), taken
        assert taken[2].startswith('none: no free ROS domain id'), taken
    finally:
        for process, _ in holders:
            process.stdin.close()
            process.wait(30)
    # released when they ended: this process may take one now
    assert ros_domain.isolate_ros_domain(candidates=pair) in pair
    assert os.environ['ROS_DOMAIN_ID'] in map(str, pair)


def test_a_domain_with_another_participant_on_it_is_skipped():
    pytest.importorskip('rclpy')
    occupied, free = free_domains(2)
    occupant = subprocess.Popen(
        [sys.executable, '-c', 'import rclpy, sys\nrclpy.init()\n'
         'node = rclpy.create_node("occupant")\nprint("up", flush=True)\nsys.stdin.read()\n'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, 'ROS_DOMAIN_ID': str(occupied),
             'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'})
    try:
        assert occupant.stdout.readline().strip() == 'up'
        assert ros_domain.domain_in_use(occupied)
        assert ros_domain.isolate_ros_domain(candidates=(occupied, free)) == free
        ros_domain.release_domain()
        with pytest.raises(RuntimeError, match='no free ROS domain id'):
            ros_domain.isolate_ros_domain(candidates=(occupied,))
    finally:
        occupant.stdin.close()
        occupant.wait(30)


def test_an_explicit_choice_is_taken_as_it_is(monkeypatch):
    assert ros_domain.isolate_ros_domain(42) == 42 and os.environ['ROS_DOMAIN_ID'] == '42'
    monkeypatch.setenv(ros_domain.DOMAIN_ID_VARIABLE, '17')
    assert ros_domain.isolate_ros_domain() == 17
    assert ros_domain.isolate_ros_domain(5) == 5, "a caller's id wins over the variable"
    monkeypatch.setenv(ros_domain.DOMAIN_ID_VARIABLE, 'seven')
    with pytest.raises(ValueError, match='must be a ROS domain id'):
        ros_domain.isolate_ros_domain()
