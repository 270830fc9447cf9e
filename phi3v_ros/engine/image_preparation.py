"""
Turn an RGB frame into the bytes the Phi-3-vision processor reads: bounded, self-encoded.

Only bytes encoded here ever reach onnxruntime-genai's processor: it decodes PNG and JPEG, and any
other bytes reach libjpeg, which calls exit(1) and ends the process.
"""
from __future__ import annotations

import cv2
import numpy as np

IMAGE_FORMATS = ('png', 'jpeg')


def bound_longest_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """
    Downscale so that the longest side is at most max_side (0 = no bound); never upscale.

    The processor's HD transform tops out at 16 crops of 336 px, so pixels beyond that only cost
    encoding and decoding time.
    """
    height, width = rgb.shape[:2]
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return rgb
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def encode_image(rgb: np.ndarray, image_format: str = 'png', jpeg_quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as PNG or JPEG bytes."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}')
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if image_format == 'png':
        # Level 1: the bytes are read once, a few ms later, so speed beats size.
        ok, encoded = cv2.imencode('.png', bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif image_format == 'jpeg':
        ok, encoded = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f'image_format must be one of {IMAGE_FORMATS}, not {image_format!r}')
    if not ok:
        raise ValueError(f'OpenCV could not encode a {rgb.shape} image as {image_format}')
    return encoded.tobytes()
