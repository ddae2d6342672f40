"""Run kohya-ss sd-scripts' own Flux transformer (library/flux_models.py, commit 48d368fa) with its
`txt_attention_mask` (what `--apply_t5_attn_mask` passes) on a tiny model of builtin:tiny-flux's shape, seeded
weights and fixed inputs; save the weights (Black Forest Labs' layout), inputs and outputs. Run in a scratch
folder holding flux_models.py (`git show <commit>:library/flux_models.py > flux_models.py`)."""

import ast
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from einops import rearrange
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
NAMES = {
    "FluxParams", "attention", "rope", "apply_rope", "EmbedND", "timestep_embedding", "MLPEmbedder",
    "RMSNorm", "QKNorm", "SelfAttention", "ModulationOut", "Modulation", "DoubleStreamBlock",
    "SingleStreamBlock", "LastLayer", "Flux",
}  # fmt: skip


def extract(path, names):
    """The named top-level functions and classes, decorators (@dataclass) included."""
    lines = Path(path).read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    kinds = (ast.FunctionDef, ast.ClassDef)
    nodes = [n for n in tree.body if isinstance(n, kinds) and n.name in names]
    first = lambda n: min([n.lineno] + [d.lineno for d in n.decorator_list])  # noqa: E731
    return "\n\n".join("\n".join(lines[first(n) - 1 : n.end_lineno]) for n in nodes)


ns = {"torch": torch, "math": math, "nn": nn, "Tensor": Tensor, "rearrange": rearrange,
      "dataclass": dataclass, "Optional": Optional, "checkpoint": checkpoint, "Union": object}  # fmt: skip
exec(extract("flux_models.py", NAMES), ns)
FluxParams, Flux = ns["FluxParams"], ns["Flux"]

params = FluxParams(in_channels=64, vec_in_dim=32, context_in_dim=64, hidden_size=16, mlp_ratio=4.0,
                    num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[2, 2, 4], theta=10000,
                    qkv_bias=True, guidance_embed=True)  # fmt: skip
torch.manual_seed(11)
model = Flux(params).eval()
with torch.no_grad():  # larger weights than the default init, so every layer moves the output
    for p in model.parameters():
        p.mul_(3.0)

g = torch.Generator().manual_seed(5)
b, h, w, text_len = 2, 8, 8, 12
noisy = torch.randn(b, 16, h, w, generator=g)
txt = torch.randn(b, text_len, 64, generator=g)
y = torch.randn(b, 32, generator=g)
t5_mask = (torch.arange(text_len)[None] < torch.tensor([[3], [9]])).long()  # as the tokenizer returns it
timesteps = torch.tensor([700.0, 250.0])
img = rearrange(noisy, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)  # kohya's pack_latents
img_ids = torch.zeros(h // 2, w // 2, 3)
img_ids[..., 1] = torch.arange(h // 2)[:, None]
img_ids[..., 2] = torch.arange(w // 2)[None, :]
img_ids = img_ids.reshape(1, -1, 3).expand(b, -1, -1)
txt_ids = torch.zeros(b, text_len, 3)
guidance = torch.full((b,), 3.5)


def call(mask):
    with torch.no_grad():
        out = model(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y=y, timesteps=timesteps / 1000,
                    guidance=guidance, txt_attention_mask=mask)  # fmt: skip
    return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, w=w // 2, ph=2, pw=2)


tensors = {f"weights.{k}": v.contiguous() for k, v in model.state_dict().items()}
tensors.update(noisy=noisy, txt=txt, y=y, t5_mask=t5_mask, timesteps=timesteps)
tensors.update(masked=call(t5_mask), unmasked=call(None))
save_file(tensors, "kohya_flux_mask.safetensors", metadata={"commit": COMMIT})
print({k: tuple(v.shape) for k, v in tensors.items() if not k.startswith("weights.")})
