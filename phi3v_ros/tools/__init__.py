"""Command-line tools shipped with phi3v_ros (each module is one entry point)."""
