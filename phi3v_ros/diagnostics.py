"""What the node reports on /diagnostics, computed without ROS (the node wraps it in messages)."""
from __future__ import annotations

from typing import List, Tuple

from phi3v_ros.engine_client import EngineState

OK, WARN, ERROR = 0, 1, 2   # diagnostic_msgs/DiagnosticStatus levels

_LEVELS = {
    EngineState.READY: OK, EngineState.GENERATING: OK, EngineState.LOADING: WARN,
    EngineState.RESTARTING: WARN, EngineState.STOPPED: WARN, EngineState.FAILED: ERROR,
}


def engine_status(engine, qa, frames, model_path: str,
                  health=None) -> Tuple[int, str, List[Tuple[str, str]]]:
    """
    Describe the engine, the frames and the prompt counts: (level, message, key/value pairs).

    health (a ThreadHealth) raises the level to ERROR while a thread is dead or an internal error
    is recent (guarded_thread.py).
    """
    state = engine.state
    latest = frames.latest()
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
        ('model_path', model_path),
        ('worker_pid', str(engine.pid or '')),
        ('worker_restarts', str(engine.restarts)),
        ('latest_frame_age_s', 'none' if latest is None else f'{latest.age_s():.3f}'),
        ('frames_received', str(frames.received)),
        ('queue_depth', str(qa.queue_depth)),
        ('prompts_received', str(counters.received)),
        ('prompts_answered', str(counters.answered)),
        ('prompts_rejected', str(counters.rejected)),
        ('prompts_failed', str(counters.failed)),
        ('last_time_to_first_token_s',
         '' if last is None else f'{last.time_to_first_token_s:.3f}'),
        ('last_tokens_per_s', '' if last is None else f'{last.decode_tokens_per_s:.1f}'),
        ('frame_transport', getattr(engine, 'frame_transport', '')),
        ('internal_errors', str(health.error_count if health is not None else 0)),
        ('last_internal_error', '' if last_error is None
         else f'{last_error.thread}: {last_error.text}'),
    ]
    return level, message, values
