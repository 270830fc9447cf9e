"""
phi3v_ros: ask Phi-3-vision about what a ROS 2 robot's camera sees.

The package is a ROS-free core (frame conversion, prompt format, request queue, the
onnxruntime-genai engine and its worker process) with a thin ROS 2 shell (``vision_qa_node``) and
separate tools.
"""
