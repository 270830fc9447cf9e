"""
The ground floor, used by every other subpackage.

Exception types (errors), threads that cannot die silently (guarded_thread), text from messages
made safe to show (text).

May import: nothing of phi3v_ros. ROS-free.
"""
