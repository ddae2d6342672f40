"""Activation memory of a LoRA training step of SD3.5 (medium, large) and Flux.1 dev, measured on the CPU at
their real width with few blocks, then extrapolated to the full block count (docs/memory.md, "The flow
families").

    python tests/bench/bench_flow_activations.py [--models flux sd35m sd35l] [--resolutions 512 1024]
        [--modes plain checkpointed] [--threads 2] [--json out.json]

Each model is the real diffusers transformer built from its public config (counted: FLUX.1-dev
11,901,408,320 parameters, SD3.5 large 8,056,627,520, SD3.5 medium 2,243,171,520, as dbspec/families.py)
with random bf16 weights and fewer blocks: Flux 1 double + 1 single block; SD3.5 medium 3 blocks (a dual-
attention block, a plain one, and the last, context-pre-only one); SD3.5 large 2 (a plain block and the
last). A rank-16 peft LoRA (fp32) sits on the family's default targets (dbspec/families.py `lora_targets`).
One step: batch 1, bf16 autocast with LayerNorm/GroupNorm run in fp32 as CUDA autocast runs them, SDPA
attention, text tokens as dbspec trains them (Flux: 512 T5 tokens; SD3: 77 CLIP + 256 T5), an MSE loss on
the output, backward.

What is measured, per (model, resolution, gradient checkpointing):

- `peak`: the rise of the process's peak resident memory (VmHWM, reset through /proc/self/clear_refs before
  the step) over the resident memory just before it, with every allocation of 64 KiB or more in its own
  mapping (MALLOC_MMAP_THRESHOLD_, set by re-executing), so RSS follows live tensors. Parameter gradients
  are the LoRA's (tiny); a warm-up step first pages in the kernels' code.
- `saved`: the bytes autograd keeps for backward (saved-tensor hooks, each storage once, parameters
  excluded), attributed to the top-level block that saved them (`blocks`) or to the rest (`outside`); plain
  runs only (checkpointing keeps its own hooks).
- `block_inputs`: the bytes of each top-level block's tensor inputs: what a checkpointed run keeps per
  block.

Extrapolation to the full model (`full`): plain = peak + (full - built blocks) x saved bytes per block of
each kind; checkpointed = peak + (full - built blocks) x block-input bytes of each kind (the recomputed
block is already in the measured peak).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.real_models import FLUX, SD35L, SD35M  # noqa: E402

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"

# model -> (family, public config, reduced config, block kind of each built block, full count of each kind)
MODELS = {
    "flux": ("flux", FLUX, dict(num_layers=1, num_single_layers=1), {"double": 19, "single": 38}),
    "sd35m": (
        "sd3",
        SD35M,
        dict(num_layers=3, dual_attention_layers=(0,)),
        {"dual": 13, "plain": 10, "last": 1},
    ),
    "sd35l": ("sd3", SD35L, dict(num_layers=2), {"plain": 37, "last": 1}),
}
TEXT_TOKENS = {"flux": 512, "sd3": 77 + 256}


def block_kind(model: str, name: str) -> str:
    if model == "flux":
        return "single" if name.startswith("single_") else "double"
    index = int(name.rsplit(".", 1)[1])
    if model == "sd35m":
        return ("dual", "plain", "last")[index]
    return ("plain", "last")[index]


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _fp32_norms():
    """CUDA autocast runs layer_norm and group_norm in fp32; CPU autocast does not: patch them to."""
    import torch.nn.functional as F

    layer_norm, group_norm = F.layer_norm, F.group_norm

    def ln(x, shape, weight=None, bias=None, eps=1e-5):
        w = weight.float() if weight is not None else None
        b = bias.float() if bias is not None else None
        return layer_norm(x.float(), shape, w, b, eps)

    def gn(x, groups, weight=None, bias=None, eps=1e-5):
        w = weight.float() if weight is not None else None
        b = bias.float() if bias is not None else None
        return group_norm(x.float(), groups, w, b, eps)

    F.layer_norm, F.group_norm = ln, gn


def build(model: str):
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from peft import LoraConfig

    from dbspec.families import family_spec

    family, config, reduced, _ = MODELS[model]
    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    torch.manual_seed(0)
    net = cls(**{**config, **reduced}).to(torch.bfloat16)
    net.requires_grad_(False)
    net.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(family_spec(family).lora_targets)))
    for name, p in net.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
    return family, net


def inputs(family: str, resolution: int):
    import torch

    g = torch.Generator().manual_seed(0)
    side = resolution // 8
    text = TEXT_TOKENS[family]
    if family == "flux":
        tokens = (side // 2) ** 2
        ids = torch.zeros(side // 2, side // 2, 3)
        ids[..., 1] += torch.arange(side // 2)[:, None]
        ids[..., 2] += torch.arange(side // 2)[None, :]
        return dict(
            hidden_states=torch.randn(1, tokens, 64, generator=g).bfloat16(),
            encoder_hidden_states=torch.randn(1, text, 4096, generator=g).bfloat16(),
            pooled_projections=torch.randn(1, 768, generator=g).bfloat16(),
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([3.5]),
            img_ids=ids.reshape(-1, 3),
            txt_ids=torch.zeros(text, 3),
            return_dict=False,
        )
    return dict(
        hidden_states=torch.randn(1, 16, side, side, generator=g).bfloat16(),
        encoder_hidden_states=torch.randn(1, text, 4096, generator=g).bfloat16(),
        pooled_projections=torch.randn(1, 2048, generator=g).bfloat16(),
        timestep=torch.tensor([500.0]),
        return_dict=False,
    )


def _blocks(net):
    return [
        (f"{group}.{i}", block)
        for group in ("transformer_blocks", "single_transformer_blocks")
        for i, block in enumerate(getattr(net, group, []))
    ]


def step(model: str, net, family: str, resolution: int, checkpointing: bool) -> dict:
    import torch

    if checkpointing:
        net.enable_gradient_checkpointing()
    else:
        net.disable_gradient_checkpointing()
    args = inputs(family, resolution)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    current = ["outside"]
    saved: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    input_sizes: dict[str, dict[int, int]] = {}
    handles = []
    for name, block in _blocks(net):

        def pre(_module, a, kw, name=name):
            current[0] = name
            tensors = [t for t in (*a, *kw.values()) if isinstance(t, torch.Tensor)]
            tensors += [
                t for v in kw.values() if isinstance(v, tuple) for t in v if isinstance(t, torch.Tensor)
            ]
            input_sizes[name] = {
                t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors
            }

        def post(*_a, **_k):
            current[0] = "outside"

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post))

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            saved[current[0]] += storage.nbytes()
        return t

    before = _status("VmRSS")
    _reset_peak()
    start = time.time()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        out = net(**args)[0]
    loss = torch.nn.functional.mse_loss(out.float(), torch.zeros_like(out, dtype=torch.float32))
    loss.backward()
    seconds = time.time() - start
    peak = _status("VmHWM") - before
    for h in handles:
        h.remove()
    # what the checkpoint of one more block keeps: its own inputs; those every block shares (the rotary
    # embedding, temb) are kept once and are already in the measured peak
    block_inputs = {
        name: sum(
            n
            for p, n in sizes.items()
            if not any(p in other for o, other in input_sizes.items() if o != name)
        )
        for name, sizes in input_sizes.items()
    }
    net.zero_grad(set_to_none=True)
    kinds: dict[str, list[int]] = defaultdict(list)
    inputs_by_kind: dict[str, list[int]] = defaultdict(list)
    for name, _ in _blocks(net):
        kinds[block_kind(model, name)].append(saved.get(name, 0))
        inputs_by_kind[block_kind(model, name)].append(block_inputs.get(name, 0))
    return dict(
        model=model,
        resolution=resolution,
        checkpointing=checkpointing,
        seconds=round(seconds, 1),
        peak=peak,
        saved_outside=saved.get("outside", 0),
        saved_per_block={k: max(v) for k, v in kinds.items()},
        inputs_per_block={k: max(v) for k, v in inputs_by_kind.items()},
    )


def extrapolate(row: dict) -> int:
    _, _, _, full = MODELS[row["model"]]
    per = row["inputs_per_block"] if row["checkpointing"] else row["saved_per_block"]
    built = {k: 1 for k in per}
    return int(row["peak"] + sum((full[k] - built[k]) * per[k] for k in full))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[512, 1024])
    parser.add_argument(
        "--modes", nargs="+", default=["plain", "checkpointed"], choices=["plain", "checkpointed"]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if os.environ.get(MMAP_ENV) != "65536":  # every tensor in its own mapping: RSS follows live tensors
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: "65536"})
    import torch

    torch.set_num_threads(args.threads)
    _fp32_norms()
    rows = []
    for model in args.models:
        family, net = build(model)
        step(model, net, family, 256, False)  # warm-up: page in the kernels' code
        for resolution in args.resolutions:
            for checkpointing in [mode == "checkpointed" for mode in args.modes]:
                row = step(model, net, family, resolution, checkpointing)
                row["full"] = extrapolate(row)
                tokens = (resolution // 16) ** 2 + TEXT_TOKENS[family]
                row["full_per_token"] = row["full"] // tokens
                rows.append(row)
                print(json.dumps(row), flush=True)
        del net
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
