"""
The ROS 2 shell: topics, services, parameters and /diagnostics wired to the request core.

The wiring (shell), in the phases of the lifecycle; the plain node that runs them all at once
(vision_qa_node) and the managed one that runs one per transition (managed_node); the parameter
table (parameters), the diagnostics (diagnostics), and cv_bridge as the converter of the
encodings the node does not convert itself (cv_bridge_fallback).

May import: everything below it (base, interface, frames, engine, core); nothing imports it.
"""
