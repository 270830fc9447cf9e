"""
ask: publish one question to a vision_qa node, print the answer as it streams, exit by outcome.

    ros2 run phi3v_ros ask "What is in front of you?" [--timeout 60] [--namespace /robot1]
    ros2 run phi3v_ros ask "..." --ros-args -r prompt:=/my/prompt -r answer:=/my/answer

Exit status: 0 answer, 1 ERROR reply, 2 timeout, 3 no node listening.

It starts fast: the module imports neither the engine stack (onnxruntime-genai, OpenCV, numpy) nor,
until the arguments are parsed, rclpy (`ask --help` needs no ROS at all).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from phi3v_ros.base.text import printable
from phi3v_ros.interface.replies import ERROR_PREFIX

EXIT_ANSWER, EXIT_ERROR_REPLY, EXIT_TIMEOUT, EXIT_NO_NODE = 0, 1, 2, 3
PIECES_GRACE_S = 0.5
DELIVERY_TIMEOUT_S = 2.0


def without_ros_args(argv: List[str]) -> List[str]:
    """Return argv without its ROS arguments (--ros-args ... [--]); rclpy only if it has any."""
    if '--ros-args' not in argv:
        return list(argv)
    from rclpy.utilities import remove_ros_args
    return remove_ros_args(argv)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='ask', description=__doc__.split('\n\n')[0])
    parser.add_argument('question', help='the question to ask about what the camera sees')
    parser.add_argument('--timeout', type=float, default=60.0,
                        help='seconds to wait for the complete answer (default 60)')
    parser.add_argument('--connect-timeout', type=float, default=10.0,
                        help='seconds to wait for a vision_qa node to be found (default 10)')
    parser.add_argument('--namespace', default='',
                        help='namespace of the vision_qa node, e.g. /robot1')
    parser.add_argument('--prompt-topic', default='prompt')
    parser.add_argument('--answer-topic', default='answer')
    parser.add_argument('--no-stream', action='store_true', help='print only the final answer')
    return parser.parse_args(argv)


class AskClient:
    """Publishes one prompt and collects the streamed pieces and the answer that follow it."""

    def __init__(self, node, prompt_topic: str, answer_topic: str, stream: bool) -> None:
        from std_msgs.msg import String
        self._String = String
        self.node = node
        self.answer: Optional[str] = None
        self.pieces: List[str] = []
        self._stream = stream
        self._asked = False
        self._publisher = node.create_publisher(String, prompt_topic, 10)
        self._answer_topic = node.resolve_topic_name(answer_topic)
        node.create_subscription(String, answer_topic, self._on_answer, 10)
        node.create_subscription(String, answer_topic + '/stream', self._on_piece, 100)

    def connected(self) -> bool:
        return (self._publisher.get_subscription_count() > 0
                and self.node.count_publishers(self._answer_topic) > 0)

    def ask(self, question: str) -> None:
        self._asked = True
        self._publisher.publish(self._String(data=question))

    def wait_delivered(self, timeout_s: float) -> bool:
        """
        Wait until the node has acknowledged the prompt (bounded); call before exiting.

        The node's subscription can match this publisher a moment after this publisher matched
        it: the prompt is then re-sent only while the publisher exists. With several clients the
        first answer seen may be another prompt's, and exiting at once lost this one.
        """
        if not self._asked:
            return True
        from rclpy.duration import Duration
        return self._publisher.wait_for_all_acked(Duration(nanoseconds=int(timeout_s * 1e9)))

    def complete(self) -> bool:
        return self.answer is not None and ''.join(self.pieces) == self.answer

    def _on_piece(self, message) -> None:
        # Pieces and the answer travel on two topics: the last pieces may come after the answer.
        if self._asked and not self.complete():
            self.pieces.append(message.data)
            if self._stream:   # anyone may publish on the topic: no terminal escapes
                sys.stdout.write(printable(message.data))
                sys.stdout.flush()

    def _on_answer(self, message) -> None:
        if self._asked and self.answer is None:
            self.answer = message.data


def spin_until(node, condition, timeout_s: float) -> bool:
    import rclpy
    deadline = time.monotonic() + timeout_s
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        rclpy.spin_once(node, timeout_sec=min(0.1, remaining))
    return True


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse_args(without_ros_args(argv)[1:])
    import rclpy
    from rclpy.node import Node
    rclpy.init(args=argv)
    node = Node(f'ask_{os.getpid()}', namespace=args.namespace)
    client = None
    try:
        client = AskClient(node, args.prompt_topic, args.answer_topic, stream=not args.no_stream)
        if not spin_until(node, client.connected, args.connect_timeout):
            print(f'ask: no vision_qa node found on {node.resolve_topic_name(args.prompt_topic)} '
                  f'within {args.connect_timeout:g} s (is it running, in this namespace and '
                  'ROS_DOMAIN_ID?)',
                  file=sys.stderr)
            return EXIT_NO_NODE
        client.ask(args.question)
        if not spin_until(node, lambda: client.answer is not None, args.timeout):
            print(f'\nask: no answer within {args.timeout:g} s', file=sys.stderr)
            return EXIT_TIMEOUT
        answer = client.answer
        if not answer.startswith(ERROR_PREFIX):
            spin_until(node, client.complete, PIECES_GRACE_S)
        if answer.startswith(ERROR_PREFIX):
            if client.pieces and not args.no_stream:
                print()
            print(printable(answer), file=sys.stderr)
            return EXIT_ERROR_REPLY
        if args.no_stream or ''.join(client.pieces) != answer:
            # Streamed pieces can be missed (a late subscription); the answer is always complete.
            if client.pieces and not args.no_stream:
                print()
            print(printable(answer))
        else:
            print()
        return EXIT_ANSWER
    except KeyboardInterrupt:
        return 130
    finally:
        if client is not None:
            client.wait_delivered(DELIVERY_TIMEOUT_S)
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
