"""
What crosses the node's topics, shared by the node and its clients: the reply format (replies).

May import: base. ROS-free, and light: a client imports it and must start fast.
"""
