"""SimpleTuner configs and data backends (entry point: convert.py)."""
