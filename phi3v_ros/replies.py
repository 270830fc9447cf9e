"""
What a reply on the answer topic looks like; shared by the node and the ask client.

Kept apart from vision_qa.py so that the ask client imports nothing of the engine stack (OpenCV,
numpy, onnxruntime-genai) and starts fast.
"""

# Every reply that is not an answer starts with this.
ERROR_PREFIX = 'ERROR: '
