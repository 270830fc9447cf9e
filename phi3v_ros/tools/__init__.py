"""
Command-line tools shipped with phi3v_ros, and what tests and benchmarks share.

Entry points: build_genai_wheel (with genai_wheel/), make_tiny_model (with tiny_model_graphs),
fetch_model, synthetic_camera, demo. Shared by the tests, benchmarks and soaks: ros_domain (a
ROS domain of their own).

May import: base, interface, frames, engine; not the request core, the node or the client.
"""
