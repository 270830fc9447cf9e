"""
Command-line tools shipped with phi3v_ros, each module one entry point.

build_genai_wheel (with genai_wheel/), make_tiny_model, fetch_model, synthetic_camera, demo.

May import: base, interface, frames, engine; not the request core, the node or the client.
"""
