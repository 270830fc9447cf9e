"""
The ROS 2 shell: topics, services, parameters and /diagnostics wired to the request core.

The node (vision_qa_node), its parameter table (parameters), its diagnostics (diagnostics), and
cv_bridge as the converter of the encodings the node does not convert itself (cv_bridge_fallback).

May import: everything below it (base, interface, frames, engine, core); nothing imports it.
"""
