"""
What robot programs use to ask the node.

The client library (vision_qa_client: ask a question, get its own answer), the ``ask`` command
line built on it (ask), and a node spun in a thread and stopped cleanly (spinning).

May import: base, interface; never frames, engine or core (numpy, OpenCV, onnxruntime-genai), so
that a client starts fast.
"""
