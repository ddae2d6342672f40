"""kohya-ss sd-scripts: command lines, --config_file, dataset configs and N_class folders (entry
point: convert.py)."""
