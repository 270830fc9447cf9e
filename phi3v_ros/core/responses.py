"""
The response a request gets (interface/requests.py's format), made from its Reply.

One per request, with the request's id: status ok with the text and the checked value, or error
with the sentence the ERROR replies use; the frames the answer used, the cameras left out, the
token counts and times, and each choice's probability where the model gave them.
"""
from __future__ import annotations

from typing import Optional

from phi3v_ros.core.vision_qa import Reply
from phi3v_ros.interface.replies import ERROR_PREFIX
from phi3v_ros.interface.requests import (RequestError, response_json, STATUS_ERROR, STATUS_OK)


def response_message(reply: Reply) -> str:
    """Return the response message of a request's Reply."""
    request = reply.ticket.request
    result = reply.result
    details = {
        'frames': [{'camera': bound.camera, 'stamp': round(bound.frame.stamp_s, 6),
                    'frame_id': bound.frame.frame_id, 'age_s': round(bound.age_s, 4),
                    'age_source': bound.age_source} for bound in reply.frames],
        'missing_cameras': list(reply.missing),
        'choice_probabilities': (dict(result.choice_probabilities)
                                 if result is not None and result.choice_probabilities else None),
        'constrained_by': result.constrained_by or None if result is not None else None,
        'prompt_tokens': result.prompt_tokens if result is not None else 0,
        'image_tokens': result.image_tokens if result is not None else 0,
        'generated_tokens': result.generated_tokens if result is not None else 0,
        'time_to_first_token_s': round(result.time_to_first_token_s, 4) if result else None,
        'total_s': round(result.total_s, 4) if result is not None else None,
        'stop_reason': result.stop_reason.value if result is not None else None,
        'conversation': None if reply.conversation is None else {
            'follows': reply.conversation.follows, 'continued': reply.conversation.continued,
            'follow_up': reply.conversation.follow_up,
            'new_because': reply.conversation.new_because or None,
            'open': reply.conversation.open},
    }
    if reply.ok:
        return response_json(request.id, STATUS_OK, reply.text, reply.value, None, **details)
    error = reply.text[len(ERROR_PREFIX):] if reply.text.startswith(ERROR_PREFIX) else reply.text
    return response_json(request.id, STATUS_ERROR, '', None, error, **details)


def refusal_message(error: RequestError, request_id: Optional[str] = None) -> str:
    """Return the response to a request message that could not be read as a request."""
    return response_json(request_id if request_id is not None else error.request_id,
                         STATUS_ERROR, '', None, f'{error}.', frames=[], missing_cameras=[],
                         choice_probabilities=None, constrained_by=None, prompt_tokens=0,
                         image_tokens=0, generated_tokens=0, time_to_first_token_s=None,
                         total_s=None, stop_reason=None)
