"""
The quality of service of the response topic: the node's publisher and its clients' subscriptions.

Reliable, keep the last RESPONSE_DEPTH, and transient local. Transient local because a client
that has just started (every `ask` does) sends its request once the node's request subscription
is matched, but DDS matches the two ends of a topic on their own: the node's response writer may
not have discovered the client's reader yet when an immediate answer (an error response, a
cancel) goes out, and a volatile writer sends nothing to a reader it meets later. A transient
local writer sends its history to a reader it meets later, so the response still arrives (seen
lost once in a few thousand fresh clients before). A new client therefore also receives up to
RESPONSE_DEPTH earlier responses of other clients; it drops them by their ids, unparsed.

Subscribers that ask for volatile durability (ros2 topic echo, the default of rclpy) are
compatible and receive no history. This package is ROS-free (clients import it and must start
fast; the import-direction test holds it to that): the caller hands rclpy.qos in.
"""

# A burst of responses (busy rejections for a flood of requests) must not overwrite responses a
# slow subscriber has not acknowledged yet; the same depth as the plain answer topic.
RESPONSE_DEPTH = 1000


def response_qos(qos):
    """Return the response topic's QoSProfile, built with qos (the module rclpy.qos)."""
    return qos.QoSProfile(history=qos.HistoryPolicy.KEEP_LAST, depth=RESPONSE_DEPTH,
                          reliability=qos.ReliabilityPolicy.RELIABLE,
                          durability=qos.DurabilityPolicy.TRANSIENT_LOCAL)
