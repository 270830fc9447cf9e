"""
ask: ask a vision_qa node one question, print the answer as it streams, exit by outcome.

    ros2 run phi3v_ros ask "What is in front of you?" [--timeout 60] [--namespace /robot1]
    ros2 run phi3v_ros ask "Is the door open?" --choices yes,no        # prints yes or no
    ros2 run phi3v_ros ask "How many people?" --regex '[0-9]{1,2}'
    ros2 run phi3v_ros ask "Check the room." --json-schema room.schema.json
    ros2 run phi3v_ros ask "..." --ros-args -r request:=/my/request -r response:=/my/response

Exit status: 0 answer, 1 ERROR reply, 2 timeout, 3 no node listening.

A thin user of the client library (vision_qa_client.py): the question is a request with an id of
its own, so the answer printed is this question's, never another client's. With a format, the
value is printed (JSON for a schema) and nothing streams. It starts fast: the module imports
neither the engine stack (onnxruntime-genai, OpenCV, numpy) nor, until the arguments are parsed,
rclpy (`ask --help` needs no ROS at all).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import List, Optional

from phi3v_ros.base.text import printable

EXIT_ANSWER, EXIT_ERROR_REPLY, EXIT_TIMEOUT, EXIT_NO_NODE = 0, 1, 2, 3
PIECES_GRACE_S = 0.5


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
    parser.add_argument('--request-topic', default='request')
    parser.add_argument('--response-topic', default='response')
    parser.add_argument('--no-stream', action='store_true', help='print only the final answer')
    form = parser.add_mutually_exclusive_group()
    form.add_argument('--choices', help='the answer is one of these, comma-separated: yes,no')
    form.add_argument('--regex', help='the answer matches this regular expression')
    form.add_argument('--json-schema', metavar='FILE_OR_JSON',
                      help='the answer is JSON of this schema (a file, or the schema itself)')
    parser.add_argument('--camera', action='append', default=[], metavar='TOPIC',
                        help="answer from this camera only (repeatable; the node's resolved "
                             'topic names)')
    parser.add_argument('--max-new-tokens', type=int)
    return parser.parse_args(argv)


def _schema(text: str) -> dict:
    if os.path.isfile(text):
        with open(text, encoding='utf-8') as f:
            text = f.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f'ask: --json-schema is neither a file nor JSON ({exc})') from None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse_args(without_ros_args(argv)[1:])
    options = {'cameras': args.camera, 'max_new_tokens': args.max_new_tokens}
    if args.choices is not None:
        options['choices'] = [c.strip() for c in args.choices.split(',') if c.strip()]
    if args.regex is not None:
        options['regex'] = args.regex
    if args.json_schema is not None:
        options['json_schema'] = _schema(args.json_schema)
    formatted = any(name in options for name in ('choices', 'regex', 'json_schema'))
    from phi3v_ros.client.vision_qa_client import AnswerTimeout, NodeNotFound, VisionQAClient
    client = VisionQAClient(namespace=args.namespace, request_topic=args.request_topic,
                            response_topic=args.response_topic, args=argv)
    pieces: List[str] = []
    streamed = threading.Condition()

    def on_piece(piece: str) -> None:   # in the client's spinning thread
        with streamed:
            pieces.append(piece)
            streamed.notify_all()
        if not args.no_stream:      # anyone may publish on the topic: no terminal escapes
            sys.stdout.write(printable(piece))
            sys.stdout.flush()

    try:
        answer = client.ask(args.question, timeout=args.timeout,
                            connect_timeout=args.connect_timeout,
                            on_piece=None if formatted else on_piece, **options)
        if not answer.ok:
            if pieces and not args.no_stream:
                print()
            print(printable('ERROR: ' + (answer.error or 'no reason given')), file=sys.stderr)
            return EXIT_ERROR_REPLY
        if formatted:
            value = answer.value
            print(printable(value if isinstance(value, str) else json.dumps(value)))
            return EXIT_ANSWER
        # Pieces and the answer travel on two topics: the last pieces may come after it.
        with streamed:
            streamed.wait_for(lambda: ''.join(pieces) == answer.text, PIECES_GRACE_S)
            complete = ''.join(pieces) == answer.text
        if args.no_stream or not complete:
            # Streamed pieces can be missed (a late subscription); the answer is always complete.
            if pieces and not args.no_stream:
                print()
            print(printable(answer.text))
        else:
            print()
        return EXIT_ANSWER
    except NodeNotFound as exc:
        print(f'ask: {exc}', file=sys.stderr)
        return EXIT_NO_NODE
    except AnswerTimeout as exc:
        print(f'\nask: {exc}', file=sys.stderr)
        client.wait_delivered()     # the cancel
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == '__main__':
    sys.exit(main())
