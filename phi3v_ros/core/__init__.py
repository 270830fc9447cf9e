"""
The ROS-free request core: prompts in, one reply each out.

The question-answering service (vision_qa), the bounded queue and its busy policies
(prompt_queue), the conversation history (history).

May import: base, interface, frames, engine. Never rclpy or ROS messages.
"""
