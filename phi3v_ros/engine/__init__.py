"""
The engine and its worker process: everything that runs onnxruntime-genai, and the node's handle.

engine (the generation loop), generation (the plain data of a request and its result), prompt
(the Phi-3 chat format), model_inputs, hd_transform and image_preparation (the model's inputs),
genai_releases and model_paths (what a release and a model folder need), memory_guard (the KV
cache against free memory), worker, worker_launch and piece_coalescer (the worker process), and
engine_client (the node's side of the worker, in the node's process).

May import: base, frames (the frame transport). ROS-free, and never the request core.
"""
