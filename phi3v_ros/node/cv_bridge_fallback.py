"""
cv_bridge, the converter of the encodings the node does not convert itself.

A ROS package: the ROS shell loads it and hands it to frames.frame_conversion.FrameConverter as
its fallback.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from phi3v_ros.base.errors import ImageConversionError
from phi3v_ros.base.text import short_repr


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
