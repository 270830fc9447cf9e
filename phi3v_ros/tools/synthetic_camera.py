"""
synthetic_camera: publish a moving test picture as sensor_msgs/Image (or CompressedImage).

For demos, tests and benchmarks when no camera is attached:
    ros2 run phi3v_ros synthetic_camera --width 640 --height 480 --rate 30
Frames are built once up front and only their stamps change, so publishing costs almost nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import cv2
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CompressedImage, Image

PATTERN_FRAMES = 30


def test_picture(height: int, width: int, index: int) -> np.ndarray:
    """An RGB picture: colour gradients, a moving disc and the frame number."""
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = np.broadcast_to(x, (height, width)).astype(np.uint8)
    rgb[..., 1] = np.broadcast_to(y, (height, width)).astype(np.uint8)
    rgb[..., 2] = (index * 8) % 256
    radius = max(2, min(height, width) // 6)
    centre = (int((index / PATTERN_FRAMES) * width) % width, height // 2)
    cv2.circle(rgb, centre, radius, (255, 255, 255), -1)
    cv2.putText(rgb, str(index), (5, max(12, height // 8)), cv2.FONT_HERSHEY_SIMPLEX,
                max(0.4, height / 400), (0, 0, 0), 2)
    return rgb


def make_messages(height: int, width: int, encoding: str, compressed: bool, frame_id: str) -> list:
    messages = []
    for index in range(PATTERN_FRAMES):
        rgb = test_picture(height, width, index)
        if compressed:
            message = CompressedImage(format='jpeg')
            message.data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
        else:
            pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if encoding == 'bgr8' else rgb
            message = Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                            step=width * 3)
            message.data = pixels.tobytes()
        message.header.frame_id = frame_id
        messages.append(message)
    return messages


class SyntheticCamera(Node):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__('synthetic_camera')
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=(ReliabilityPolicy.BEST_EFFORT if args.best_effort
                                      else ReliabilityPolicy.RELIABLE))
        topic = args.topic + ('/compressed' if args.compressed else '')
        message_type = CompressedImage if args.compressed else Image
        self._publisher = self.create_publisher(message_type, topic, qos)
        self._messages = make_messages(args.height, args.width, args.encoding, args.compressed,
                                       args.frame_id)
        self._index = 0
        self.create_timer(1.0 / args.rate, self._publish)
        self.get_logger().info(f'publishing {args.width}x{args.height} '
                               f'{"jpeg" if args.compressed else args.encoding} '
                               f'at {args.rate:g} Hz on {self.resolve_topic_name(topic)}')

    def _publish(self) -> None:
        message = self._messages[self._index % PATTERN_FRAMES]
        message.header.stamp = self.get_clock().now().to_msg()
        self._publisher.publish(message)
        self._index += 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(prog='synthetic_camera', description=__doc__.split('\n\n')[0])
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--rate', type=float, default=15.0, help='frames per second')
    parser.add_argument('--encoding', choices=('bgr8', 'rgb8'), default='bgr8')
    parser.add_argument('--compressed', action='store_true',
                        help='publish JPEG on <topic>/compressed')
    parser.add_argument('--best-effort', action='store_true',
                        help='best-effort QoS (default reliable)')
    parser.add_argument('--topic', default='image')
    parser.add_argument('--frame-id', default='camera')
    args = parser.parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = SyntheticCamera(args)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - see below
        # SIGINT while a large frame is being published to a reliable subscriber: rclpy's
        # handler shuts the context down under the publish, which then fails. That is the stop
        # that was asked for, not an error.
        if rclpy.ok():
            raise
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
