"""torch.compile, channels-last and AdamW's foreach/fused kernels on the CPU: one training step of a UNet.

    python tests/bench/bench_compile.py [--model tiny|mid] [--rounds 5] [--steps 10] [--what compile,..]

Each variant runs the same work: the UNet forward at a fixed latent size, an MSE loss, the backward pass and
an AdamW step (a full fine-tune). Variants alternate round by round (eager, variant, eager, variant, ...) so
a neighbour's load hits both alike; each reports its best round of `--steps` steps, and the ratio is eager
best / variant best (> 1: the variant is faster). The machine is shared: read the ratios, not the seconds,
and the load average printed with them.

What each variant changes, and nothing else:
  compile        unet.compile() (inductor, default mode, automatic dynamic shapes), as precision.compile
                 does; the first call compiles (timed apart; inductor's disk cache may be warm or cold)
  channels_last  the UNet's weights and its input in torch.channels_last
  foreach        torch.optim.AdamW(foreach=True)     (eager's optimizer is the for-loop, torch's CPU default)
  fused          torch.optim.AdamW(fused=True)       (torch's fused CPU kernel)
  vae_channels_last  the VAE's encoder in channels_last, timed on a no-grad encode of a batch of images
  compile_grads  not a timing: one step's loss and gradients, eager against inductor (the DBS336 check)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# A mid-size UNet with random weights (no download): SD1's layout at a quarter of its widths.
MID_UNET = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128, 256, 256),
    "layers_per_block": 2,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 256,
    "attention_head_dim": 8,
}


def build(model: str):
    import torch
    from diffusers import UNet2DConditionModel

    from dbspec.runtime.tiny import build_pipeline

    torch.manual_seed(0)
    pipe = build_pipeline("builtin:tiny-sd1")
    if model == "tiny":
        return pipe.unet, pipe.vae, 8, 2
    return UNet2DConditionModel(**MID_UNET), pipe.vae, 32, 2


class Trainer:
    """A UNet, its AdamW and fixed inputs; `steps(n)` trains n full steps and returns the seconds."""

    def __init__(self, unet, latent: int, batch: int, *, optim: dict, channels_last: bool, compile: bool):
        import torch

        self.unet = copy.deepcopy(unet).train()
        self.unet.requires_grad_(True)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(1)
        ch = self.unet.config.in_channels
        self.x = torch.randn(batch, ch, latent, latent, generator=g).contiguous(memory_format=fmt)
        self.target = torch.randn(batch, ch, latent, latent, generator=g)
        self.t = torch.randint(0, 1000, (batch,), generator=g)
        self.text = torch.randn(batch, 77, self.unet.config.cross_attention_dim, generator=g)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=1e-4, **optim)
        if compile:
            self.unet.compile()

    def steps(self, n: int) -> float:
        import torch

        started = time.perf_counter()
        for _ in range(n):
            pred = self.unet(self.x, self.t, self.text).sample
            loss = torch.nn.functional.mse_loss(pred.float(), self.target)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - started


VARIANTS = {
    "compile": {"compile": True},
    "channels_last": {"channels_last": True},
    "foreach": {"optim": {"foreach": True}},
    "fused": {"optim": {"fused": True}},
}


def trainer(unet, latent, batch, **change) -> Trainer:
    settings = {"optim": {"foreach": False}, "channels_last": False, "compile": False} | change
    return Trainer(unet, latent, batch, **settings)


def compare(name: str, unet, latent: int, batch: int, rounds: int, steps: int) -> dict:
    eager = trainer(unet, latent, batch)
    other = trainer(unet, latent, batch, **VARIANTS[name])
    first = other.steps(1)  # compiles for "compile"; warms caches for the others
    eager.steps(1)
    best_eager = best_other = float("inf")
    for _ in range(rounds):
        best_eager = min(best_eager, eager.steps(steps) / steps)
        best_other = min(best_other, other.steps(steps) / steps)
    return {"variant": name, "eager_s": best_eager, "variant_s": best_other, "first_s": first}


def vae_channels_last(vae, rounds: int, steps: int, size: int = 64, batch: int = 4) -> dict:
    import torch

    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(batch, 3, size, size, generator=g)
    plain = copy.deepcopy(vae).eval()
    cl = copy.deepcopy(vae).eval().to(memory_format=torch.channels_last)
    cl_pixels = pixels.contiguous(memory_format=torch.channels_last)

    def timed(model, x) -> float:
        started = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                model.encode(x).latent_dist.mean.sum()
        return (time.perf_counter() - started) / steps

    timed(plain, pixels), timed(cl, cl_pixels)
    best_eager = best_other = float("inf")
    for _ in range(rounds):
        best_eager = min(best_eager, timed(plain, pixels))
        best_other = min(best_other, timed(cl, cl_pixels))
    return {"variant": "vae_channels_last", "eager_s": best_eager, "variant_s": best_other, "first_s": 0.0}


def gradient_error(unet, latent: int, batch: int) -> dict:
    """Loss and gradients of one step, eager and compiled (inductor), compared: the relative error of all
    gradients together and the worst tensors. With torch 2.13 on the CPU the loss matches and the gradients
    do not (docs/performance.md): the reason the plan refuses precision.compile on the CPU (DBS336)."""
    import torch

    def step(model) -> tuple[float, dict]:
        g = torch.Generator().manual_seed(1)
        ch = model.config.in_channels
        x = torch.randn(batch, ch, latent, latent, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        text = torch.randn(batch, 77, model.config.cross_attention_dim, generator=g)
        model.zero_grad(set_to_none=True)
        loss = model(x, t, text).sample.float().square().mean()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    eager = copy.deepcopy(unet).train().requires_grad_(True)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    (loss_e, grad_e), (loss_c, grad_c) = step(eager), step(compiled)
    norm = sum(g.square().sum() for g in grad_e.values()).sqrt()
    error = sum((grad_c[n] - grad_e[n]).square().sum() for n in grad_e).sqrt() / norm
    # By absolute error: tensors whose true gradient is ~0 (a bias before a group norm) have large relative
    # errors from rounding alone.
    worst = sorted(grad_e, key=lambda n: -float((grad_c[n] - grad_e[n]).norm()))
    for name in worst[:5]:
        print(
            f"  worst: {name} |eager grad| {grad_e[name].norm():.3e} "
            f"|compiled grad| {grad_c[name].norm():.3e}"
        )
    zero = [n for n in grad_e if not grad_c[n].any() and grad_e[n].any()]
    print(f"  {len(zero)} of {len(grad_e)} gradients are all zero compiled and not eager")
    return {"variant": "compile_grads", "loss_eager": loss_e, "loss_compiled": loss_c, "error": float(error)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "mid"), default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--what", default="compile,channels_last,foreach,fused,vae_channels_last")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    unet, vae, latent, batch = build(args.model)
    rows = []
    for name in args.what.split(","):
        load = os.getloadavg()[0]
        if name == "compile_grads":
            row = gradient_error(unet, latent, batch)
            print(
                f"{args.model:5} compile_grads  loss eager {row['loss_eager']:.9g} compiled "
                f"{row['loss_compiled']:.9g}  gradient relative error {row['error']:.3e}",
                flush=True,
            )
            rows.append(row)
            continue
        if name == "vae_channels_last":
            row = vae_channels_last(vae, args.rounds, args.steps)
        else:
            row = compare(name, unet, latent, batch, args.rounds, args.steps)
        row |= {"load": load, "ratio": row["eager_s"] / row["variant_s"]}
        rows.append(row)
        print(
            f"{args.model:5} {row['variant']:18} eager {row['eager_s'] * 1e3:8.1f} ms/step  variant "
            f"{row['variant_s'] * 1e3:8.1f} ms/step  ratio {row['ratio']:.2f}x  "
            f"first call {row['first_s']:.1f} s  (load {load:.1f}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads)",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
