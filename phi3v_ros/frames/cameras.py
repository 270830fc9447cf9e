"""
The cameras a prompt is answered from: one latest-frame cache each, and the binding of frames.

A prompt is bound to the latest frame of every camera when the dispatcher takes it (bind): with
max_image_age set, it waits up to image_wait_timeout for every camera to have a fresh frame, and
otherwise fails naming each camera that was stale or sent nothing. bind_available (for
allow_text_only) waits the same way but then takes the fresh frames there are, and says which
cameras had none: a stale camera never costs the frames of the fresh ones. With one camera named by
image_topic (labelled False) the model is not told camera names, as before several cameras were
possible; with image_topics every image is introduced by its camera's topic (see prompt.py).

Threads: store() runs in the image callbacks, bind() in the dispatcher, rates() in the
diagnostics timer; each cache has its own lock (frame_cache.py) and nothing here blocks while
holding one.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from phi3v_ros.frames.frame_cache import Frame, FrameAge, FrameCache

# How often bind() looks again at ages that change with time alone (a stamp-aged frame ages as
# the clock runs, with no new frame to wake the wait).
RECHECK_S = 0.1


@dataclasses.dataclass(frozen=True)
class BoundFrame:
    """One camera's frame as bound to a prompt, with its age at that moment."""

    camera: str
    frame: Frame
    age_s: float
    age_source: str    # 'stamp' or 'arrival' (FrameAge.measure)


class CamerasNotReady(Exception):
    """Not every camera had a (fresh) frame in time; the message names each one that had not."""


class Cameras:
    """Ordered cameras (by topic name), each with its latest-frame cache."""

    def __init__(self, names: Sequence[str], age: Optional[FrameAge] = None,
                 labelled: bool = True) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError(f'cameras must be one or more distinct topics, not {list(names)}')
        self.names: Tuple[str, ...] = tuple(names)
        self.age = age or FrameAge()
        self.labelled = labelled
        self._caches: Dict[str, FrameCache] = {name: FrameCache() for name in names}
        self._rate_marks: Dict[str, Tuple[float, int]] = {}

    def cache(self, camera: str) -> FrameCache:
        return self._caches[camera]

    def store(self, camera: str, message, stamp_s: float) -> None:
        self._caches[camera].store(message, stamp_s)

    @property
    def received(self) -> int:
        """Frames received from all cameras together."""
        return sum(cache.received for cache in self._caches.values())

    def latest(self, camera: str) -> Optional[BoundFrame]:
        frame = self._caches[camera].latest()
        if frame is None:
            return None
        age_s, source = self.age.measure(camera, frame)
        return BoundFrame(camera, frame, age_s, source)

    def bind(self, max_age_s: float, timeout_s: float,
             check: Callable[[], None] = lambda: None,
             names: Sequence[str] = ()) -> Tuple[BoundFrame, ...]:
        """
        Return every camera's latest frame, each at most max_age_s old (0 = any age).

        Waits up to timeout_s for them; check() is called between waits (it raises to stop).
        Raises CamerasNotReady naming the cameras that had no frame or only an old one. names
        (a subset of the cameras, in their order) binds only those; () binds all.
        """
        bound, waiting = self._wait(max_age_s, timeout_s, check, names)
        if waiting:
            raise CamerasNotReady(self._not_ready(waiting, max_age_s, timeout_s))
        return bound

    def bind_available(self, max_age_s: float, timeout_s: float,
                       check: Callable[[], None] = lambda: None, names: Sequence[str] = ()
                       ) -> Tuple[Tuple[BoundFrame, ...], Tuple[str, ...], str]:
        """
        Wait as bind() does, then return what there is: (fresh frames, missing cameras, why).

        The frames keep the cameras' order; missing names the cameras without a fresh frame and
        why is bind()'s sentence about them ('' when every camera had one).
        """
        bound, waiting = self._wait(max_age_s, timeout_s, check, names)
        if not waiting:
            return bound, (), ''
        missing = tuple(name for name, _ in waiting)
        fresh = tuple(frame for frame in bound
                      if frame is not None and frame.camera not in missing)
        return fresh, missing, self._not_ready(waiting, max_age_s, timeout_s)

    def _wait(self, max_age_s: float, timeout_s: float, check: Callable[[], None],
              names: Sequence[str] = ()
              ) -> Tuple[Tuple[BoundFrame, ...], List[Tuple[str, Optional[BoundFrame]]]]:
        """Return (each camera's latest frame, those not fresh) once all are, or at timeout."""
        names = tuple(name for name in self.names if name in names) if names else self.names
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            bound = [self.latest(name) for name in names]
            waiting = [(name, found) for name, found in zip(names, bound)
                       if found is None or (max_age_s > 0 and found.age_s > max_age_s)]
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                return tuple(bound), waiting
            check()
            name, found = waiting[0]
            self._caches[name].wait_newer(0 if found is None else found.frame.sequence,
                                          min(RECHECK_S, remaining))

    def _not_ready(self, waiting: List[Tuple[str, Optional[BoundFrame]]], max_age_s: float,
                   timeout_s: float) -> str:
        if not self.labelled:    # the one camera of image_topic: the sentences users know
            found = waiting[0][1]
            if found is None:
                return f'no camera image has arrived (waited {timeout_s:g} s).'
            return (f'the latest camera image is {found.age_s:.1f} s old{_by(found)}, older than '
                    f'max_image_age ({max_age_s:g} s), and no newer one arrived within '
                    f'{timeout_s:g} s.')
        reasons = []
        for name, found in waiting:
            if found is None:
                reasons.append(f'{name} has sent no image')
            else:
                reasons.append(f'{name}: the latest image is {found.age_s:.1f} s old{_by(found)}')
        stale = '' if max_age_s <= 0 else f' at most {max_age_s:g} s old (max_image_age)'
        return (f'not every camera had an image{stale} within {timeout_s:g} s '
                f'(image_wait_timeout): {"; ".join(reasons)}.')

    def rates(self, now: Optional[float] = None) -> Dict[str, float]:
        """
        Frames per second received from each camera since the previous call (diagnostics).

        The first call gives 0.0: there is no earlier mark yet. Only one thread may call it.
        """
        now = time.monotonic() if now is None else now
        rates = {}
        for name, cache in self._caches.items():
            received = cache.received
            since, before = self._rate_marks.get(name, (now, received))
            rates[name] = (received - before) / (now - since) if now > since else 0.0
            self._rate_marks[name] = (now, received)
        return rates


def _by(found: BoundFrame) -> str:
    return ' (by its header stamp)' if found.age_source == 'stamp' else ''


def describe_frames(frames: Sequence[BoundFrame]) -> str:
    """One line for the frames an answer used (log and diagnostics); 'no frame' for none."""
    if not frames:
        return 'no frame'
    return '; '.join(f'{bound.camera} stamp {bound.frame.stamp_s:.3f} frame_id '
                     f'{bound.frame.frame_id or "(none)"} age {bound.age_s:.3f} s '
                     f'(by {bound.age_source}, #{bound.frame.sequence})' for bound in frames)
