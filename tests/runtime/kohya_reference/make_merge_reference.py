"""Run kohya-ss sd-scripts' own networks.lora LoRAInfModule.merge_to (commit 48d368fa) on fixed weights and
LoRA tensors; save the inputs and the merged weights. Run in a scratch folder holding lora.py
(`git show <commit>:networks/lora.py > lora.py`)."""

import ast
import logging
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
source = Path("lora.py").read_text()
tree = ast.parse(source)
ns = {"torch": torch, "math": math, "logger": logging.getLogger("kohya")}
for node in tree.body:
    if isinstance(node, ast.ClassDef) and node.name in ("LoRAModule", "LoRAInfModule"):
        exec(ast.get_source_segment(source, node), ns)
LoRAInfModule = ns["LoRAInfModule"]

g = torch.Generator().manual_seed(21)
out = {}
# (layer, rank, alpha or None, multiplier, dtype)
CASES = [
    ("linear", 4, 2.0, 1.0, torch.float16),
    ("linear", 4, None, 0.7, torch.bfloat16),
    ("linear", 8, 3.0, 0.35, torch.float32),
    ("conv1", 3, 1.5, 1.0, torch.float16),
    ("conv3", 2, 1.0, 0.8, torch.bfloat16),
    ("conv3", 4, 0.0, 1.0, torch.float32),
]
for i, (kind, rank, alpha, multiplier, dtype) in enumerate(CASES):
    if kind == "linear":
        org = torch.nn.Linear(12, 10)
        down, up = torch.randn(rank, 12, generator=g), torch.randn(10, rank, generator=g)
    else:
        k = 3 if kind == "conv3" else 1
        org = torch.nn.Conv2d(5, 6, k, padding=k // 2)
        down, up = torch.randn(rank, 5, k, k, generator=g), torch.randn(6, rank, 1, 1, generator=g)
    with torch.no_grad():
        org.weight.copy_(torch.randn(org.weight.shape, generator=g))
    p = f"merge.{i}"
    out[f"{p}.weight"] = org.weight.detach().clone()
    out[f"{p}.down"], out[f"{p}.up"] = down.half(), up.half()  # files store fp16, as kohya saves them
    sd = {"lora_up.weight": up.half(), "lora_down.weight": down.half()}
    if alpha is not None:
        out[f"{p}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    stored = out.get(f"{p}.alpha")  # create_network_from_weights: the file's tensor, or the rank
    module = LoRAInfModule(f"lora_unet_x{i}", org, multiplier, rank, stored if stored is not None else rank)
    module.merge_to(sd, dtype, "cpu")
    out[f"{p}.merged"] = org.weight.detach().clone()
    out[f"{p}.options"] = torch.tensor(
        [multiplier, {torch.float16: 16.0, torch.bfloat16: 8.0, torch.float32: 32.0}[dtype]]
    )
save_file({k: v.contiguous() for k, v in out.items()}, "kohya_merge.safetensors", metadata={"commit": COMMIT})
print(len(out))
