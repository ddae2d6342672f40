"""Run kohya-ss sd-scripts' own networks.lora LoRANetwork.apply_max_norm_regularization (commit 48d368fa) on
fixed LoRA weights; save the weights before and after, and what it returns. Run in a scratch folder holding
lora.py (`git show <commit>:networks/lora.py > lora.py`)."""

import ast
from pathlib import Path

import torch
from safetensors.torch import save_file

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


def method(path, cls, name):
    source = Path(path).read_text()
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return __import__("textwrap").dedent(ast.get_source_segment(source, item))
    raise KeyError(name)


ns = {"torch": torch}
exec(method("lora.py", "LoRANetwork", "apply_max_norm_regularization"), ns)
apply = ns["apply_max_norm_regularization"]


class Module(torch.nn.Module):
    """What kohya's LoRAModule stores: lora_down, lora_up and the float32 alpha buffer."""

    def __init__(self, down, up, alpha):
        super().__init__()
        self.lora_down, self.lora_up = down, up
        self.register_buffer("alpha", torch.tensor(alpha))


class Network(torch.nn.Module):
    def __init__(self, modules):
        super().__init__()
        self.loras = torch.nn.ModuleList(modules)


# (kind, in, out, rank, alpha, up gain): linears, a 1x1 and a 3x3 convolution, a fused (q, k, v) linear; gains
# make some updates exceed the limit and some not
CASES = {
    "linear": [
        ("linear", 12, 10, 4, 2.0, 1.0),
        ("linear", 8, 6, 2, 1.0, 0.05),
        ("linear", 16, 16, 8, 8.0, 3.0),
    ],
    "conv": [("conv1", 6, 5, 3, 1.5, 2.0), ("conv3", 4, 7, 2, 1.0, 2.0), ("conv3", 3, 4, 4, 4.0, 0.01)],
    "fused": [("linear", 10, 24, 4, 2.0, 1.5)],
    "bf16": [("linear", 12, 10, 4, 2.0, 1.0), ("conv3", 4, 7, 2, 1.0, 2.0)],
}
LIMIT = 1.0
out = {}
g = torch.Generator().manual_seed(11)
for case, layers in CASES.items():
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    modules = []
    for i, (kind, n_in, n_out, rank, alpha, gain) in enumerate(layers):
        if kind == "linear":
            down, up = torch.nn.Linear(n_in, rank, bias=False), torch.nn.Linear(rank, n_out, bias=False)
        else:
            k = 3 if kind == "conv3" else 1
            down = torch.nn.Conv2d(n_in, rank, k, padding=k // 2, bias=False)
            up = torch.nn.Conv2d(rank, n_out, 1, bias=False)
        with torch.no_grad():
            down.weight.copy_(torch.randn(down.weight.shape, generator=g))
            up.weight.copy_(torch.randn(up.weight.shape, generator=g) * gain)
        down, up = down.to(dtype), up.to(dtype)
        p = f"{case}.{i}"
        out[f"{p}.down"] = down.weight.detach().clone()
        out[f"{p}.up"] = up.weight.detach().clone()
        out[f"{p}.alpha"] = torch.tensor(alpha)
        modules.append(Module(down, up, alpha))
    network = Network(modules)
    keys_scaled, mean_norm, max_norm = apply(network, LIMIT, torch.device("cpu"))
    for i, module in enumerate(modules):
        out[f"{case}.{i}.down_after"] = module.lora_down.weight.detach().clone()
        out[f"{case}.{i}.up_after"] = module.lora_up.weight.detach().clone()
    out[f"{case}.result"] = torch.tensor([float(keys_scaled), mean_norm, max_norm], dtype=torch.float64)
    # a second call on the scaled weights (kohya calls it after every micro-batch)
    keys_scaled, mean_norm, max_norm = apply(network, LIMIT, torch.device("cpu"))
    for i, module in enumerate(modules):
        out[f"{case}.{i}.down_again"] = module.lora_down.weight.detach().clone()
        out[f"{case}.{i}.up_again"] = module.lora_up.weight.detach().clone()
    out[f"{case}.result_again"] = torch.tensor([float(keys_scaled), mean_norm, max_norm], dtype=torch.float64)

save_file(
    {k: v.contiguous() for k, v in out.items()},
    "kohya_max_norm.safetensors",
    metadata={"commit": COMMIT, "limit": str(LIMIT)},
)
print(len(out), {k: out[k].tolist() for k in out if "result" in k})
