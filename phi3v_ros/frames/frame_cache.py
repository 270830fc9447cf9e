"""
The latest frame of one camera, kept as the raw message: storing it costs O(1), no conversion.

Conversion happens once, when a prompt takes the frame (see vision_qa.py). How old a frame is
(FrameAge) is measured by default from its header stamp against the node's clock, so that a frame
taken long ago but delivered now is old and a bag replayed under use_sim_time ages in simulated
time; a zero stamp, or one ahead of the clock (a camera whose clock runs fast), is aged from its
arrival on this machine's monotonic clock instead.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Optional, Set, Tuple

from phi3v_ros.base.text import short_repr

AGE_SOURCES = ('stamp', 'arrival')
# A stamp up to this far ahead of the node's clock is taken as now (clocks a few ms apart, NTP
# steps); further ahead, the camera's clock is wrong and the frame is aged by its arrival.
FUTURE_STAMP_TOLERANCE_S = 0.5
# A frame_id is shown in every answer's log line and in /diagnostics: at most this long there.
MAX_FRAME_ID_CHARS = 128


@dataclasses.dataclass(frozen=True)
class Frame:
    message: Any          # sensor_msgs/Image or CompressedImage, untouched
    stamp_s: float        # header stamp in seconds (camera clock)
    arrival: float        # time.monotonic() when it arrived
    sequence: int         # 1 for the first frame received, then +1 per frame

    def age_s(self, now: Optional[float] = None) -> float:
        """Seconds since it arrived (monotonic clock)."""
        return (time.monotonic() if now is None else now) - self.arrival

    @property
    def frame_id(self) -> str:
        """Return header.frame_id; escaped and cut unless short and printable (for logs)."""
        header = getattr(self.message, 'header', None)
        text = str(getattr(header, 'frame_id', ''))
        if len(text) <= MAX_FRAME_ID_CHARS and text.isprintable():
            return text
        return short_repr(text, MAX_FRAME_ID_CHARS)


class FrameAge:
    """
    How old a frame is: by its header stamp against clock_s (source 'stamp'), or by its arrival.

    clock_s returns the node's clock in seconds (ROS time: simulated under use_sim_time). A stamp
    of zero falls back to the arrival, and so does every frame while the clock reads zero (no
    /clock message yet under use_sim_time); a stamp more than tolerance_s ahead of the clock does
    too, logged once per camera. Thread-safe.
    """

    def __init__(self, source: str = 'stamp', clock_s: Callable[[], float] = time.time,
                 log: Callable[[str], None] = lambda text: None,
                 tolerance_s: float = FUTURE_STAMP_TOLERANCE_S) -> None:
        if source not in AGE_SOURCES:
            raise ValueError(f'the frame age source must be one of {", ".join(AGE_SOURCES)}, '
                             f'not {source!r}')
        self.source = source
        self._clock_s = clock_s
        self._log = log
        self._tolerance_s = tolerance_s
        self._warned: Set[str] = set()
        self._lock = threading.Lock()

    def measure(self, camera: str, frame: Frame) -> Tuple[float, str]:
        """Return (age in seconds, 'stamp' or 'arrival': what it was measured from)."""
        if self.source == 'stamp' and frame.stamp_s != 0.0:
            now = self._clock_s()
            if now == 0.0:   # use_sim_time before the first /clock message: no time yet
                return frame.age_s(), 'arrival'
            age = now - frame.stamp_s
            if age >= -self._tolerance_s:
                return max(age, 0.0), 'stamp'
            self._warn_future(camera, -age)
        return frame.age_s(), 'arrival'

    def _warn_future(self, camera: str, ahead_s: float) -> None:
        with self._lock:
            first = camera not in self._warned
            self._warned.add(camera)
        if first:
            self._log(f"{camera}: a frame is stamped {ahead_s:.3f} s ahead of this node's clock "
                      f'(more than {self._tolerance_s:g} s): its age is taken from its arrival '
                      "instead (said once per camera; check the camera's clock, or use_sim_time)")


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

    def wait_newer(self, sequence: int, timeout_s: float) -> Optional[Frame]:
        """Return the latest frame once its sequence is above sequence, waiting up to timeout_s."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while True:
                frame = self._latest
                if frame is not None and frame.sequence > sequence:
                    return frame
                now = time.monotonic()
                if now >= deadline:
                    return None
                self._changed.wait(deadline - now)
