"""
A node of its own, spun in a background thread, and stopped cleanly.

For a program whose own thread blocks while ROS callbacks must still be served: a robot program
waiting for an answer, a benchmark's peer, a test's peer. Each SpinningNode has its own context,
so several live side by side and never touch the global one.

close() does things in the one order that is safe: the spinning thread is told to stop and
joined (bounded: it spins in steps of SPIN_STEP_S), then the executor is shut down in the closing
thread, and only then is the node destroyed and the context shut down. Destroying a node that
another thread still spins crashed the interpreter (seen as segfaults in pytest teardowns), and
shutting an executor down while another thread is inside its spin() raced in rclpy itself
(InvalidHandle from its wait set). Uses only what Humble's rclpy has: Context,
create_node(context=), SingleThreadedExecutor / MultiThreadedExecutor(context=),
Executor.spin_once(timeout_sec), Executor.shutdown(timeout_sec), try_shutdown(context=).

Threads: the spinner thread runs the callbacks; start() and close() belong to the thread that made
the SpinningNode. An exception that escapes the executor ends the thread and is kept in ``error``
(close() raises it), never lost.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

# How long one spin step may wait for work: the longest a close() waits for the thread to notice.
SPIN_STEP_S = 0.1


class SpinningNode:
    """An rclpy node with its own context and executor, spun by a daemon thread once started."""

    def __init__(self, name: str, namespace: str = '', multi_threaded: bool = False,
                 args: Optional[Sequence[str]] = None) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=None if args is None else list(args), context=self.context)
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self.name = name
        executor = MultiThreadedExecutor if multi_threaded else SingleThreadedExecutor
        self.executor = executor(context=self.context)
        self.executor.add_node(self.node)
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> 'SpinningNode':
        """Start spinning (after the publishers, subscriptions and clients are made)."""
        self._thread = threading.Thread(target=self._spin, name=f'{self.name}-spin',
                                        daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            while not self._stop.is_set() and self.context.ok():
                self.executor.spin_once(timeout_sec=SPIN_STEP_S)
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # noqa: BLE001 - kept for close(), never lost in a thread
            self.error = exc

    def close(self, timeout_s: float = 10.0) -> None:
        """
        Stop spinning, then destroy the node and shut the context down, in that order.

        Raises RuntimeError if the thread did not stop within timeout_s (the node is then left
        alone: destroying it would crash), and the spinner's own error if it had one.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(f'the spinner of {self.name} did not stop within '
                                   f'{timeout_s:g} s')
        self.executor.shutdown(timeout_sec=timeout_s)   # callbacks still running finish first
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        if self.error is not None:
            raise RuntimeError(f'the spinner of {self.name} failed: '
                               f'{type(self.error).__name__}: {self.error}') from self.error
