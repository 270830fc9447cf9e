"""
What robot programs use to ask the node: the ``ask`` command line (ask).

May import: base, interface; never frames, engine or core (numpy, OpenCV, onnxruntime-genai), so
that a client starts fast.
"""
