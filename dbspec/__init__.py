"""dbspec: DreamBooth fine-tuning from one declarative, compiler-checked TOML spec."""

__version__ = "0.1.0"
