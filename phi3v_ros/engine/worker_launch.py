"""
Start the worker process (phi3v_ros.engine.worker_launch.main in a new Python), and reap it.

Why not multiprocessing's spawn: its child runs the parent's main script again (the node's console
script, and with it rclpy) before the worker's code, and it stays in the node's process group, so
that a Ctrl-C, `kill -- -PGID`, `docker stop` or launch's SIGTERM reaches it during those seconds
of imports, before it can ignore them: a KeyboardInterrupt traceback, or a worker killed under the
prompt in flight. Here the worker is spawned with posix_spawn into its own process group (same
session), with only its socket passed, and the parent alone decides when it stops: it asks over the
socket, then kills. The worker also asks Linux to kill it when the parent dies (worker.py).
"""
from __future__ import annotations

import ctypes
import fcntl
from multiprocessing.connection import Connection
import os
import signal
import socket
import sys
import threading
import time
from typing import List, Optional, Tuple

import phi3v_ros

# `python -c` with the package's folder first on sys.path: `python -m` would put the current
# folder first, and a node started in a source tree would run that tree's worker code instead.
_BOOTSTRAP = ('import sys; sys.path.insert(0, sys.argv[1]); '
              'from phi3v_ros.engine.worker_launch import main; sys.exit(main(sys.argv[2:]))')


class WorkerProcess:
    """
    A child process started by spawn(); the parts of multiprocessing.Process the client uses.

    Thread-safe: reaping and signalling happen under a lock, so a pid is never signalled after it
    was reaped (and possibly reused). The pidfd stays open until release().
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: Optional[int] = None
        self._lock = threading.Lock()
        # Readable when the process has ended (Linux >= 5.3); None: the socket's EOF tells.
        try:
            self.sentinel: Optional[int] = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.sentinel = None

    def poll(self) -> Optional[int]:
        """Reap the process if it has ended; return its exit code (-N: killed by signal N)."""
        with self._lock:
            if self.exitcode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:      # not our child any more: nothing to wait for
                    pid, status = self.pid, 255 << 8
                if pid == self.pid:
                    self.exitcode = os.waitstatus_to_exitcode(status)
            return self.exitcode

    def is_alive(self) -> bool:
        return self.poll() is None

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pause = 0.001
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(0.05, pause * 2)

    def send_signal(self, signum: int) -> None:
        with self._lock:
            if self.exitcode is None:      # not reaped: the pid is still this process's
                try:
                    os.kill(self.pid, signum)
                except ProcessLookupError:
                    pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def release(self) -> None:
        """Close the pidfd (once the process is reaped and nobody waits on it any more)."""
        with self._lock:
            sentinel, self.sentinel = self.sentinel, None
        if sentinel is not None:
            os.close(sentinel)


def _close_inherited(keep: int) -> List[tuple]:
    """
    Return posix_spawn file actions that close every inheritable descriptor but 0-2 and keep.

    Python opens its descriptors close-on-exec; libraries in C (DDS sockets, shared memory) may
    not, and the worker must not hold them.
    """
    actions = []
    for name in os.listdir('/proc/self/fd'):
        fd = int(name)
        if fd <= 2 or fd == keep:
            continue
        try:
            if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
        except OSError:
            continue      # closed meanwhile (the listing's own descriptor, another thread's)
    return actions


def spawn() -> Tuple[WorkerProcess, Connection]:
    """Start `python -m phi3v_ros.engine.worker_launch FD`; return the process and our end."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child_fd = child_sock.detach()
    try:
        os.set_inheritable(child_fd, True)
        # The worker imports this very package, wherever the parent found it (a source tree, a
        # colcon install, a venv).
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(phi3v_ros.__file__)))
        argv = [sys.executable, '-c', _BOOTSTRAP, package_root, str(child_fd), str(os.getpid())]
        pid = os.posix_spawn(sys.executable, argv, dict(os.environ), setpgroup=0,
                             file_actions=_close_inherited(child_fd))
    except BaseException:
        parent_sock.close()
        raise
    finally:
        os.close(child_fd)
    return WorkerProcess(pid), Connection(parent_sock.detach())


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent ends; exit now if it already has."""
    if sys.platform.startswith('linux'):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:   # it ended before prctl: nobody is left to answer
        os._exit(0)


def main(argv: List[str]) -> int:
    """Worker side (argv: FD PARENT_PID): read the configuration, then serve (worker_main)."""
    # Nothing that signals the node's process group is meant for the worker (module text).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(int(argv[1]))     # before the seconds of imports and loading
    conn = Connection(int(argv[0]))
    from phi3v_ros.engine.worker import worker_main
    _, config, warmup = conn.recv()
    worker_main(conn, config, warmup)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
