"""Benchmarks of vision_qa_node against the engine called directly (run with `make bench`).

Not part of the installed package: run from the repository root (`python -m bench.run`).
"""
