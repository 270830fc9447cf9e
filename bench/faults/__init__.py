"""
The soak's fault mode (`python -m bench.soak --faults`, `make soak-faults`), in its parts.

run (the options and the run itself, from start to stop), driver (the faults), client (the ROS
side), record (samples, log scan, tables) and verdict (the checks and the summary). Imports
bench.process_watch; nothing here imports bench.soak.
"""
