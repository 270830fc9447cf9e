"""
A ROS domain of one's own for tests, benchmarks and soaks.

Runs at the same time (and a robot on the default domain) then never see each other. One process
holds one domain at a time: each domain id has a lock file
(/tmp/phi3v_ros_test_domain_<id>.lock) and the process keeps an exclusive flock on the one it
uses until the next call or its exit. A domain where some other DDS participant on this machine
is seen (its discovery port is bound) is skipped too. Ids are scanned from a random offset over
the ids Fast DDS can use on Linux without port clashes (1-101 and 215-232, as the ROS 2
documentation's domain ID article gives them; 0 is the default domain, left to the user's robots).

An explicit choice wins: an id given by the caller (a benchmark's --domain-id) or in
PHI3V_ROS_TEST_DOMAIN_ID is used as it is, with no lock (you choose it, you keep others off it).

Discovery is limited to this machine: ROS_LOCALHOST_ONLY=1 on Humble; on later distros
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, and ROS_LOCALHOST_ONLY is unset (deprecated there, and
rcl warns about it on stderr).
"""
from __future__ import annotations

import fcntl
import os
import random
import socket
from typing import Optional, Sequence

SAFE_DOMAIN_IDS = tuple(range(1, 102)) + tuple(range(215, 233))
DOMAIN_ID_VARIABLE = 'PHI3V_ROS_TEST_DOMAIN_ID'
DOMAIN_LOCK = '/tmp/phi3v_ros_test_domain_{}.lock'
_held = {'id': None, 'fd': None}   # the domain this process holds, and its lock file


def _try_lock(domain_id: int) -> Optional[int]:
    """Return an open file descriptor holding the domain's lock, or None if another holds it."""
    try:
        fd = os.open(DOMAIN_LOCK.format(domain_id), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:   # e.g. a lock file of another user that we may not read
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def domain_in_use(domain_id: int, participants: int = 10) -> bool:
    """
    Tell whether a DDS participant on this machine already uses the domain.

    RTPS participant p of domain d binds the well-known unicast discovery port
    7410 + 250 * d + 2 * p (Fast DDS does, with or without localhost-only discovery): if one of
    them cannot be bound, someone is there. That covers ROS processes which take no lock (a robot,
    a run with an explicit domain).
    """
    for participant in range(participants):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(('', 7410 + 250 * domain_id + 2 * participant))
        except OSError:
            return True
        finally:
            probe.close()
    return False


def release_domain() -> None:
    """Let go of the domain this process holds (closing the descriptor releases the flock)."""
    if _held['fd'] is not None:
        os.close(_held['fd'])
    _held['id'], _held['fd'] = None, None


def isolate_ros_domain(domain_id: Optional[int] = None,
                       candidates: Sequence[int] = SAFE_DOMAIN_IDS) -> int:
    """
    Move this process, and the nodes it starts from now on, to a ROS domain of its own.

    domain_id (or PHI3V_ROS_TEST_DOMAIN_ID) chooses it; otherwise a free one of candidates is
    taken and held (see the module's text). Every call moves to a new domain (taken before the
    previous one is released), so that nodes of an earlier test cannot answer. Returns the id and
    sets ROS_DOMAIN_ID (and the localhost-only discovery variables) in os.environ.
    """
    forced = os.environ.get(DOMAIN_ID_VARIABLE, '').strip()
    if domain_id is None and forced:
        if not forced.isdigit():
            raise ValueError(f'{DOMAIN_ID_VARIABLE} must be a ROS domain id, not {forced!r}')
        domain_id = int(forced)
    if domain_id is not None:
        release_domain()
    else:
        start = random.SystemRandom().randrange(len(candidates))   # not a seeded random
        for step in range(len(candidates)):
            domain_id = candidates[(start + step) % len(candidates)]
            fd = _try_lock(domain_id)   # fails for the domain this process holds now
            if fd is not None and not domain_in_use(domain_id):
                break
            if fd is not None:
                os.close(fd)
        else:
            raise RuntimeError(
                f'no free ROS domain id: other runs hold them ({DOMAIN_LOCK.format("<id>")}) '
                f'or DDS participants use them; choose one ({DOMAIN_ID_VARIABLE}, --domain-id)')
        release_domain()
        _held['id'], _held['fd'] = domain_id, fd
    os.environ['ROS_DOMAIN_ID'] = str(domain_id)
    if os.environ.get('ROS_DISTRO') == 'humble':
        os.environ['ROS_LOCALHOST_ONLY'] = '1'
    else:
        os.environ.pop('ROS_LOCALHOST_ONLY', None)
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    return domain_id
