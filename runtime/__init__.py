"""dbspec.runtime: executes a Plan. The only package that imports torch, diffusers, accelerate and peft."""
