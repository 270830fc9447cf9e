"""
phi3v_ros: ask Phi-3-vision about what a ROS 2 robot's camera sees.

The subpackages, from the ground up; each may import only what its __init__.py names (enforced
by test/test_import_directions.py):

- ``base``: exception types, guarded threads, text made safe to show. Imports nothing here.
- ``interface``: what crosses the topics (the reply format). Imports base.
- ``frames``: camera caches, frame ages, image conversion, the shared-memory transport. No ROS.
- ``engine``: onnxruntime-genai, the chat prompt, the model's inputs, the worker process and the
  node-side client of it. No ROS; never the request core.
- ``core``: the ROS-free request core: the queue and its policies, replies, history. No ROS.
- ``node``: the ROS 2 shell (node, parameters, diagnostics, cv_bridge): wires topics, services
  and parameters to the core.
- ``client``: what robot programs and ``ask`` use; imports base and interface only, so that it
  starts fast and never loads the engine.
- ``tools``: separate entry points (the wheel builder, the tiny model, fetch_model, demo).
"""
