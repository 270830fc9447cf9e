"""
Turn a cached frame (Image or CompressedImage message) into RGB, with cv_bridge as the fallback.

The project's converters handle the common encodings (see image_conversion.py); an encoding they do
not know goes through cv_bridge where it is installed, and is otherwise refused, naming the
encoding.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from phi3v_ros.errors import ImageConversionError
from phi3v_ros.frame_cache import Frame
from phi3v_ros.image_conversion import compressed_to_rgb, image_to_rgb, is_supported


def load_cv_bridge_converter() -> Optional[Callable[[object], np.ndarray]]:
    """Return a message -> RGB function backed by cv_bridge (None where it is not installed)."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    bridge = CvBridge()

    def convert(message) -> np.ndarray:
        try:
            rgb = bridge.imgmsg_to_cv2(message, desired_encoding='rgb8')
        except Exception as exc:   # noqa: BLE001 - cv_bridge raises several unrelated types
            raise ImageConversionError(
                f'cv_bridge could not convert encoding {message.encoding!r}: {exc}') from None
        return np.ascontiguousarray(rgb)
    return convert


class FrameConverter:
    """
    Convert a frame's message (Image or CompressedImage) to an RGB array.

    allocate(shape) may give the array to convert a raw frame into (the engine's shared memory,
    see EngineClient.frame_buffer), or None; compressed and cv_bridge frames get their own array.
    """

    def __init__(self, max_pixels: int,
                 fallback: Optional[Callable[[object], np.ndarray]] = None,
                 allocate: Optional[Callable[[tuple], Optional[np.ndarray]]] = None) -> None:
        self.max_pixels = max_pixels
        self.fallback = fallback
        self.allocate = allocate

    def __call__(self, frame: Frame) -> np.ndarray:
        message = frame.message
        if hasattr(message, 'format'):     # sensor_msgs/CompressedImage
            return compressed_to_rgb(message, max_pixels=self.max_pixels)
        if self.fallback is not None and not is_supported(message.encoding):
            if message.width * message.height > self.max_pixels:
                raise ImageConversionError(
                    f'the frame has {message.width}x{message.height} pixels, more than '
                    f'max_image_pixels ({self.max_pixels})')
            return self.fallback(message)
        return image_to_rgb(message, max_pixels=self.max_pixels, out=self._destination(message))

    def _destination(self, message) -> Optional[np.ndarray]:
        if self.allocate is None:
            return None
        height, width = message.height, message.width
        # Only sizes image_to_rgb will accept: a bad header must not size the shared block.
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0
                and height * width <= self.max_pixels and is_supported(message.encoding)):
            return None
        return self.allocate((height, width, 3))
