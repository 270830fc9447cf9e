"""The reference for frame ingestion: the least a Python ROS node can do with a camera stream.

A bare rclpy node subscribing sensor_msgs/Image with the node's default camera QoS (best effort,
keep last 1), spun the way the node spins (rclpy.spin, one thread), whose callback only counts. It
prints `frames <count>` once a second, and with --delays `delay <ms>` per frame (header stamp to
callback, both on this machine's clock). It also offers an empty std_srvs/Trigger service,
`/bare_subscriber/reset`, the reference for the node's `~/reset` round trip.

    python -m bench.bare_subscriber [--topic image] [--delays]
"""
from __future__ import annotations

import argparse
import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger


class BareSubscriber(Node):
    def __init__(self, topic: str, delays: bool, reliable: bool = False) -> None:
        super().__init__('bare_subscriber')
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.count = 0
        self._delays = delays
        self.create_subscription(Image, topic, self._on_image, qos)
        self.create_timer(1.0, self._report)
        self.create_service(Trigger, '~/reset', self._on_reset)

    def _on_reset(self, request, response):
        response.success = True
        return response

    def _on_image(self, message: Image) -> None:
        self.count += 1
        if self._delays:
            stamp = message.header.stamp
            print(f'delay {(time.time() - stamp.sec - stamp.nanosec * 1e-9) * 1e3:.3f}', flush=True)

    def _report(self) -> None:
        print(f'frames {self.count}', flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('--topic', default='image')
    parser.add_argument('--delays', action='store_true')
    parser.add_argument('--reliable', action='store_true', help='reliable QoS (default best effort)')
    args = parser.parse_args(argv)
    rclpy.init()
    node = BareSubscriber(args.topic, args.delays, args.reliable)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
