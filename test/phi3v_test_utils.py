"""Helpers shared by the tests (imported as a plain module: pytest puts test/ on sys.path)."""
import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class ImageMsg:
    """Stand-in for sensor_msgs/Image: the fields the converters read, of any type."""

    encoding: Any
    height: Any
    width: Any
    step: Any
    data: Any
    is_bigendian: Any = 0


@dataclasses.dataclass
class CompressedMsg:
    """Stand-in for sensor_msgs/CompressedImage."""

    format: Any  # noqa: A003 - mirrors sensor_msgs/CompressedImage.format
    data: Any


def gradient_image(height, width, seed=0):
    """Draw a deterministic RGB test picture (smooth gradients plus a seeded block pattern)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    image = np.stack([np.broadcast_to(y, (height, width)), np.broadcast_to(x, (height, width)),
                      np.full((height, width), 128, np.float32)], axis=-1)
    blocks = rng.integers(0, 255, (4, 4, 3)).astype(np.float32)
    reps = (-(-height // 4), -(-width // 4), 1)
    image = 0.5 * image + 0.5 * np.tile(blocks.repeat(1, 0), reps)[:height, :width]
    return np.ascontiguousarray(image.astype(np.uint8))
