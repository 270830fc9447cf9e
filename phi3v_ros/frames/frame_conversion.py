"""
Turn a cached frame (Image or CompressedImage message) into RGB, with a fallback for the rest.

The project's converters handle the common encodings (see image_conversion.py); an encoding they do
not know goes through the fallback where there is one (the node gives cv_bridge, see
node/cv_bridge_fallback.py), and is otherwise refused, naming the encoding.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from phi3v_ros.base.errors import ImageConversionError
from phi3v_ros.frames.frame_cache import Frame
from phi3v_ros.frames.image_conversion import (compressed_to_rgb, image_to_rgb, is_supported,
                                               raw_image_size)


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
