"""
What crosses the node's topics, shared by the node and its clients.

The reply format of the plain answer topic (replies); the requests, responses and streamed pieces
of the request interface, with their JSON Schemas in schemas/ (requests).

May import: base. ROS-free, and light: a client imports it and must start fast.
"""
