"""
Camera frames, from the message to the RGB array the engine gets.

The latest frame of each camera and its age (frame_cache, cameras), conversion of Image and
CompressedImage messages to RGB (image_conversion, frame_conversion), and the shared-memory
transport of frames to the worker process (frame_transport).

May import: base. ROS-free: messages are read as plain objects, never imported.
"""
