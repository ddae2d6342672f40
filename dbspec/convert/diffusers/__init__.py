"""The diffusers DreamBooth example scripts (entry point: convert.py)."""
