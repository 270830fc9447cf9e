"""
Turn a cached frame (Image or CompressedImage message) into RGB, with cv_bridge as the fallback.

The project's converters handle the common encodings (see image_conversion.py); an encoding they do
not know goes through cv_bridge where it is installed, and is otherwise refused, naming the
encoding.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from phi3v_ros.errors import ImageConversionError
from phi3v_ros.frame_cache import Frame
from phi3v_ros.image_conversion import (compressed_to_rgb, image_to_rgb, is_supported,
                                        raw_image_size)
from phi3v_ros.replies import short_repr


def load_cv_bridge_converter() -> Tuple[Optional[Callable[[object], np.ndarray]], str]:
    """
    Return (a message -> RGB function backed by cv_bridge, '') or (None, why it is not there).

    Any failure disables the fallback. Only "not installed" (no module cv_bridge) is silent; one
    built for numpy 1 and imported beside numpy 2 (Humble: "_ARRAY_API not found", then an
    ImportError from its extension) or broken otherwise gives the reason.
    """
    try:
        from cv_bridge import CvBridge
        bridge = CvBridge()
    except ModuleNotFoundError as exc:
        if exc.name != 'cv_bridge':   # cv_bridge is there, something it imports is not
            return None, _unusable(exc)
        return None, ''
    except Exception as exc:  # noqa: BLE001 - an optional fallback must never stop the node
        return None, _unusable(exc)

    def convert(message) -> np.ndarray:
        try:
            rgb = bridge.imgmsg_to_cv2(message, desired_encoding='rgb8')
        except Exception as exc:   # noqa: BLE001 - cv_bridge raises several unrelated types
            raise ImageConversionError(
                f'cv_bridge could not convert encoding {short_repr(message.encoding, 60)}: '
                f'{short_repr(str(exc), 300)}') from None
        return np.ascontiguousarray(rgb)
    return convert, ''


def _unusable(exc: BaseException) -> str:
    text = ' '.join(str(exc).split()) or '(no message)'
    return (f'cv_bridge cannot be used ({type(exc).__name__}: {text}); encodings the node does '
            'not convert itself are refused (with numpy 2 on Humble or Jazzy: pip install '
            '"numpy>=1.21.6,<2", see requirements/ros.txt)')


class FrameConverter:
    """
    Convert a frame's message (Image or CompressedImage) to an RGB array.

    allocate(shape, slot) may give the array to convert a raw frame into (the engine's shared
    memory for image number slot of the request, see EngineClient.frame_buffer), or None;
    compressed and cv_bridge frames get their own array.
    """

    def __init__(self, max_pixels: int,
                 fallback: Optional[Callable[[object], np.ndarray]] = None,
                 allocate: Optional[Callable[[tuple, int], Optional[np.ndarray]]] = None) -> None:
        self.max_pixels = max_pixels
        self.fallback = fallback
        self.allocate = allocate

    def __call__(self, frame: Frame, slot: int = 0) -> np.ndarray:
        message = frame.message
        if hasattr(message, 'format'):     # sensor_msgs/CompressedImage
            return compressed_to_rgb(message, max_pixels=self.max_pixels)
        encoding = message.encoding
        # An empty or non-string encoding is refused by image_to_rgb itself, never guessed at.
        if (self.fallback is not None and isinstance(encoding, str) and encoding
                and not is_supported(encoding)):
            if message.width * message.height > self.max_pixels:
                raise ImageConversionError(
                    f'the frame has {message.width}x{message.height} pixels, more than '
                    f'max_image_pixels ({self.max_pixels})')
            return self.fallback(message)
        return image_to_rgb(message, max_pixels=self.max_pixels,
                            out=self._destination(message, slot))

    def _destination(self, message, slot: int) -> Optional[np.ndarray]:
        if self.allocate is None:
            return None
        # Only frames image_to_rgb will accept, their data length included: a header that
        # claims 6000x6000 over 1 byte of data must not size the shared block.
        try:
            height, width = raw_image_size(message, max_pixels=self.max_pixels)
        except ImageConversionError:
            return None     # image_to_rgb refuses it with the reason
        return self.allocate((height, width, 3), slot)
