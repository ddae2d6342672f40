"""Run kohya-ss sd-scripts' own networks.lora_fa LoRAModule (commit 48d368fa) through train_network.py's step
order: the network's requires_grad_(True) (torch's nn.Module method, which LoRANetwork inherits), the
optimizer over get_trainable_params (lora_up only), the clip over every network parameter, the optimizer's
zero_grad. Save the layer, the inputs, the initial and final weights and the down's gradient. Run in a scratch
folder holding lora_fa.py (`git show <commit>:networks/lora_fa.py > lora_fa.py`)."""

import ast
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
source = Path("lora_fa.py").read_text()
ns = {"torch": torch, "math": math}
for node in ast.parse(source).body:
    if isinstance(node, ast.ClassDef) and node.name == "LoRAModule":
        exec(ast.get_source_segment(source, node), ns)

out = {}
torch.manual_seed(0)
org = torch.nn.Linear(12, 10)
out["org.weight"], out["org.bias"] = org.weight.detach().clone(), org.bias.detach().clone()
module = ns["LoRAModule"]("lora_unet_x", org, 1.0, 4, 2.0)
out["down.init"], out["up.init"] = (
    module.lora_down.weight.detach().clone(),
    module.lora_up.weight.detach().clone(),
)
module.apply_to()
network = torch.nn.Module()
network.loras = torch.nn.ModuleList([module])
network.requires_grad_(True)  # LoRANetwork.prepare_optimizer_params / prepare_grad_etc
optimizer = torch.optim.AdamW(module.get_trainable_params(), lr=1e-2)
g = torch.Generator().manual_seed(9)
CLIP = 0.05
for step in range(5):
    x = torch.randn(6, 12, generator=g)
    target = torch.randn(6, 10, generator=g)
    out[f"x.{step}"], out[f"target.{step}"] = x, target
    loss = torch.nn.functional.mse_loss(org(x), target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(network.parameters()), CLIP)  # network.get_trainable_params()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
out["up.final"], out["down.final"] = (
    module.lora_up.weight.detach().clone(),
    module.lora_down.weight.detach().clone(),
)
out["down.grad"] = module.lora_down.weight.grad.detach().clone()
save_file(
    {k: v.contiguous() for k, v in out.items()},
    "kohya_lora_fa.safetensors",
    metadata={"commit": COMMIT, "clip": str(CLIP)},
)
print(len(out), float(out["down.grad"].norm()))
