"""The layers kohya's LoRA networks (networks/lora.py, networks/dylora.py) adapt, by diffusers' names."""

from __future__ import annotations

# every Linear and 1x1 Conv inside Transformer2DModel (U-Net) and inside CLIPAttention / CLIPMLP (text
# encoders); 3x3 convs only with conv_dim (LoCon, spec.model.KOHYA_CONV_TARGETS).
KOHYA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
KOHYA_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# Linear and 1x1 layers of the blocks a conv_dim network also scans (ResNet time projection and shortcut).
RESNET_LINEAR = ["time_emb_proj", "conv_shortcut"]
