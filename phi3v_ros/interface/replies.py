"""
What a reply on the answer topic looks like; shared by the node and its clients.

Kept apart from the request core so that a client (ask, the client library) imports nothing of
the engine stack (OpenCV, numpy, onnxruntime-genai) and starts fast.
"""

# Every reply that is not an answer starts with this.
ERROR_PREFIX = 'ERROR: '
