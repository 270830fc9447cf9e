"""
vision_qa_node: the plain node, answering from start to stop (the managed one: managed_node.py).

The wiring is shell.py's; this node runs all its phases at once: parameters and the interface,
then the worker and the cameras, then answering. SIGINT and SIGTERM only set a flag (rclpy's own
handlers are not installed): main() then stops taking prompts, replies to every prompt still
waiting or in flight while the ROS context is still valid, stops the worker (bounded: asked, then
killed), and exits 0.
"""
from __future__ import annotations

import sys

from phi3v_ros.node.shell import run, VisionQAShell
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class VisionQANode(VisionQAShell, Node):
    """Raises ConfigurationError, naming the parameter, for a parameter it cannot start with."""

    def __init__(self, **kwargs) -> None:
        super().__init__('vision_qa', **kwargs)
        self._init_shell()
        self._configure()
        self._activate()

    def destroy_node(self) -> None:
        # Also called (by main, and on newer rclpy by the context's shutdown) on a node whose
        # constructor failed half-way, e.g. on a parameter refused by its descriptor.
        if hasattr(self, '_shut_down'):
            self.shutdown()
        super().destroy_node()


def main(args=None) -> int:
    """Run the node; exit code 0 on SIGINT/SIGTERM, 2 on a bad parameter, 1 on a dead thread."""
    return run('vision_qa_node', VisionQANode, SingleThreadedExecutor, args)


if __name__ == '__main__':
    sys.exit(main())
