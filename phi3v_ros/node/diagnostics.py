"""What the node reports on /diagnostics, computed without ROS (the node wraps it in messages)."""
from __future__ import annotations

from typing import List, Tuple

from phi3v_ros.engine.engine_client import EngineState
from phi3v_ros.frames.cameras import describe_frames

OK, WARN, ERROR = 0, 1, 2   # diagnostic_msgs/DiagnosticStatus levels

_LEVELS = {
    EngineState.READY: OK, EngineState.GENERATING: OK, EngineState.LOADING: WARN,
    EngineState.RESTARTING: WARN, EngineState.STOPPED: WARN, EngineState.FAILED: ERROR,
}


def engine_status(engine, qa, cameras, model_path: str,
                  health=None) -> Tuple[int, str, List[Tuple[str, str]]]:
    """
    Describe the engine, the frames and the prompt counts: (level, message, key/value pairs).

    latest_frame_age_s is the oldest of the cameras' latest frames (each camera has its own
    status too: camera_statuses).

    health (a ThreadHealth) raises the level to ERROR while a thread is dead or an internal error
    is recent (guarded_thread.py).
    """
    state = engine.state
    ages = [found.age_s for found in map(cameras.latest, cameras.names) if found is not None]
    missing = len(ages) < len(cameras.names)
    counters = qa.counters
    last = qa.last_result
    level = _LEVELS[state]
    message = state.value + (f': {engine.detail}' if engine.detail else '')
    dead = health.dead_threads if health is not None else []
    recent = health.recent_error() if health is not None else None
    if dead:
        level, message = ERROR, f'thread {", ".join(dead)} ended; the node exits to be restarted'
    elif recent is not None:
        level = ERROR
        message += f' (internal error in {recent.thread}, recovered: {recent.text})'
    last_error = health.last_error if health is not None else None
    values = [
        ('engine_state', state.value),
        ('engine_detail', engine.detail),
        ('provider', str(engine.info.get('provider', 'unknown'))),
        ('onnxruntime_genai', str(engine.info.get('genai_version', 'unknown'))),
        ('image_preprocessing', str(engine.info.get('image_preprocessing', 'unknown'))),
        ('cuda_graph', str(engine.info.get('cuda_graph', 'unknown'))),
        ('model_path', model_path),
        ('worker_pid', str(engine.pid or '')),
        ('worker_restarts', str(engine.restarts)),
        ('latest_frame_age_s', 'none' if missing else f'{max(ages):.3f}'),
        ('frames_received', str(cameras.received)),
        ('queue_depth', str(qa.queue_depth)),
        ('conversation', _conversation(qa.conversation)),
        ('prompts_received', str(counters.received)),
        ('prompts_answered', str(counters.answered)),
        ('prompts_rejected', str(counters.rejected)),
        ('prompts_failed', str(counters.failed)),
        ('last_time_to_first_token_s',
         '' if last is None else f'{last.time_to_first_token_s:.3f}'),
        ('last_tokens_per_s', '' if last is None else f'{last.decode_tokens_per_s:.1f}'),
        ('last_answer_frames', describe_frames(qa.last_frames)),
        ('frame_transport', getattr(engine, 'frame_transport', '')),
        ('internal_errors', str(health.error_count if health is not None else 0)),
        ('last_internal_error', '' if last_error is None
         else f'{last_error.thread}: {last_error.text}'),
    ]
    return level, message, values


CameraStatus = Tuple[int, str, str, List[Tuple[str, str]]]   # level, camera, message, values


def camera_statuses(cameras, max_image_age_s: float) -> List[CameraStatus]:
    """
    Describe each camera: (level, camera, message, key/value pairs), in the cameras' order.

    WARN while a camera has sent nothing, or while its latest frame is older than max_image_age
    (when set): a prompt would wait for it, then fail naming it.
    """
    statuses = []
    for name, rate in cameras.rates().items():
        found = cameras.latest(name)
        if found is None:
            level, message = WARN, 'no frame received'
        elif max_image_age_s > 0 and found.age_s > max_image_age_s:
            level, message = WARN, (f'latest frame {found.age_s:.1f} s old, older than '
                                    f'max_image_age ({max_image_age_s:g} s)')
        else:
            level, message = OK, f'latest frame {found.age_s:.3f} s old'
        statuses.append((level, name, message, [
            ('frames_received', str(cameras.cache(name).received)),
            ('rate_hz', f'{rate:.2f}'),
            ('latest_frame_age_s', 'none' if found is None else f'{found.age_s:.3f}'),
            ('age_source', '' if found is None else found.age_source),
            ('latest_stamp', '' if found is None else f'{found.frame.stamp_s:.6f}'),
            ('frame_id', '' if found is None else found.frame.frame_id),
        ]))
    return statuses


def idle_status(phase: str, counters, model_path: str,
                health=None) -> Tuple[int, str, List[Tuple[str, str]]]:
    """Describe a node with no worker (managed, unconfigured): (level, message, key/values)."""
    dead = health.dead_threads if health is not None else []
    level, message = WARN, f'{phase} (lifecycle): no model loaded'
    if dead:
        level, message = ERROR, f'thread {", ".join(dead)} ended; the node exits to be restarted'
    return level, message, [
        ('lifecycle_state', phase),
        ('engine_state', EngineState.STOPPED.value),
        ('model_path', model_path),
        ('prompts_received', str(counters.received)),
        ('prompts_answered', str(counters.answered)),
        ('prompts_rejected', str(counters.rejected)),
        ('prompts_failed', str(counters.failed)),
        ('internal_errors', str(health.error_count if health is not None else 0)),
    ]


def _conversation(open_) -> str:
    """Say what conversation is open for follow-ups: 'none', or its key and follow-ups."""
    if open_ is None:
        return 'none'
    return f'{open_.key} ({open_.follow_ups} follow-ups)'
