"""
The latest camera frame, kept as the raw message: storing it costs O(1), no conversion, no copy.

Conversion happens once, when a prompt takes the frame (see vision_qa.py). Ages are measured on
this machine's monotonic clock from the frame's arrival, so they stay meaningful when the camera's
clock (header stamp) is wrong, simulated or far off; the stamp is kept for logs.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Frame:
    message: Any          # sensor_msgs/Image or CompressedImage, untouched
    stamp_s: float        # header stamp in seconds (camera clock)
    arrival: float        # time.monotonic() when it arrived
    sequence: int         # 1 for the first frame received, then +1 per frame

    def age_s(self, now: Optional[float] = None) -> float:
        return (time.monotonic() if now is None else now) - self.arrival


class FrameCache:
    def __init__(self) -> None:
        self._latest: Optional[Frame] = None
        self._received = 0
        self._changed = threading.Condition()

    def store(self, message: Any, stamp_s: float) -> None:
        """Store a frame; called from the image callback: O(1) regardless of the frame's size."""
        with self._changed:
            self._received += 1
            self._latest = Frame(message, stamp_s, time.monotonic(), self._received)
            self._changed.notify_all()

    @property
    def received(self) -> int:
        return self._received

    def latest(self) -> Optional[Frame]:
        return self._latest

    def wait_for_fresh(self, max_age_s: float, timeout_s: float) -> Optional[Frame]:
        """
        Return the latest frame if it is at most max_age_s old (0 = any age).

        Waits up to timeout_s for one.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while True:
                frame = self._latest
                now = time.monotonic()
                if frame is not None and (max_age_s <= 0 or frame.age_s(now) <= max_age_s):
                    return frame
                if now >= deadline:
                    return None
                self._changed.wait(deadline - now)
