"""Run kohya-ss sd-scripts' own apply_masked_loss (with its callers' mean) and networks.lora
LoRAModule.forward (commit 48d368fa) on fixed tensors; save inputs+outputs. Run in a scratch folder holding
ctf.py and lora.py (`git show <commit>:library/custom_train_functions.py > ctf.py`,
`git show <commit>:networks/lora.py > lora.py`)."""

import ast
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


def extract(path, names, kind=ast.FunctionDef):
    source = Path(path).read_text()
    tree = ast.parse(source)
    return "\n\n".join(
        ast.get_source_segment(source, n) for n in tree.body if isinstance(n, kind) and n.name in names
    )


ns = {"torch": torch, "math": math}
exec(extract("ctf.py", {"apply_masked_loss"}), ns)
exec(extract("lora.py", {"LoRAModule"}, ast.ClassDef), ns)
apply_masked_loss, LoRAModule = ns["apply_masked_loss"], ns["LoRAModule"]

out = {}
g = torch.Generator().manual_seed(7)
# masked loss: element-wise loss at latent size 6x6 (4 channels), pixel masks at 48x48 (area-resized by kohya)
loss = torch.rand(3, 4, 6, 6, generator=g) * 2
alpha = torch.rand(3, 48, 48, generator=g)
alpha[1] = (alpha[1] > 0.7).float()  # a small binary mask
alpha[2] = 1.0
cond = torch.rand(3, 3, 48, 48, generator=g) * 2 - 1  # conditioning images in [-1, 1]; kohya reads R
out["mask.loss"], out["mask.alpha"], out["mask.cond"] = loss, alpha, cond
out["mask.alpha_per_sample"] = apply_masked_loss(loss, {"alpha_masks": alpha}).mean([1, 2, 3])
out["mask.cond_per_sample"] = apply_masked_loss(loss, {"conditioning_images": cond}).mean([1, 2, 3])

# LoRAModule.forward while training, dropout (network_dropout) with rank and module dropout
for case, (dropout, rank_dropout, module_dropout, shape, conv) in enumerate(
    [
        (0.3, None, None, (3, 7, 6), False),
        (0.5, 0.25, None, (3, 7, 6), False),
        (0.4, 0.2, 0.3, (3, 7, 6), False),
        (0.3, 0.25, None, (2, 3, 5, 5), True),
    ]
):
    torch.manual_seed(1000 + case)
    org = torch.nn.Conv2d(3, 4, 3, padding=1) if conv else torch.nn.Linear(6, 5)
    module = LoRAModule("m", org, 1.0, 4, 2.0, dropout, rank_dropout, module_dropout)
    torch.nn.init.normal_(module.lora_up.weight)
    module.apply_to()
    module.train()
    x = torch.randn(*shape)
    p = f"lora.{case}"
    out[f"{p}.x"] = x
    for k, v in org.state_dict().items():
        out[f"{p}.org.{k}"] = v.clone()
    out[f"{p}.down"] = module.lora_down.weight.detach().clone()
    out[f"{p}.up"] = module.lora_up.weight.detach().clone()
    out[f"{p}.options"] = torch.tensor([dropout, rank_dropout or 0.0, module_dropout or 0.0])
    for seed in range(6):
        torch.manual_seed(seed)
        out[f"{p}.out.{seed}"] = module.forward(x).detach().clone()

save_file(
    {k: v.contiguous() for k, v in out.items()},
    "kohya_masked_dropout.safetensors",
    metadata={"commit": COMMIT},
)
print(len(out))
