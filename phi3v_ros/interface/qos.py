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
compatible and receive no history. rclpy is imported in the function, not here: this package is
imported by clients that must start fast, and by code without ROS.
"""

# A burst of responses (busy rejections for a flood of requests) must not overwrite responses a
# slow subscriber has not acknowledged yet; the same depth as the plain answer topic.
RESPONSE_DEPTH = 1000


def response_qos():
    """Return the QoSProfile of the response topic, for its publisher and its subscriptions."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=RESPONSE_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
