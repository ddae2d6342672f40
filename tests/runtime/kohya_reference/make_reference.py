"""Run kohya-ss sd-scripts' own noise/loss functions (commit 48d368fa) on fixed tensors;
save inputs+outputs."""

import ast
import math
import types
from pathlib import Path
from typing import Optional, Tuple

import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


def extract(path, names):
    source = Path(path).read_text()
    tree = ast.parse(source)
    return "\n\n".join(
        ast.get_source_segment(source, n)
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name in names
    )


GEN = torch.Generator()


class TorchProxy(types.ModuleType):
    """torch, with the random draws kohya makes routed to one seeded generator (same order
    as kohya's code)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, *shape, **kw):
        kw.pop("device", None)
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        return torch.randn(*shape, generator=GEN, **kw)

    def randn_like(self, x, **kw):
        return torch.randn(x.shape, generator=GEN, dtype=x.dtype)

    def rand(self, *shape, **kw):
        kw.pop("device", None)
        return torch.rand(*shape, generator=GEN, **kw)

    def randint(self, lo, hi, size, **kw):
        kw.pop("device", None)
        return torch.randint(lo, hi, size, generator=GEN, **kw)


tp = TorchProxy("torch")
rand_proxy = types.SimpleNamespace(random=lambda: float(torch.rand((), generator=GEN)))

ctf = types.ModuleType("custom_train_functions")
ctf.__dict__.update(torch=tp, random=rand_proxy, math=math, DDPMScheduler=DDPMScheduler, Number=float)
exec(
    extract(
        "ctf.py",
        {
            "prepare_scheduler_for_custom_training",
            "apply_snr_weight",
            "scale_v_prediction_loss_like_noise_prediction",
            "get_snr_scale",
            "add_v_prediction_like_loss",
            "apply_debiased_estimation",
            "pyramid_noise_like",
            "apply_noise_offset",
        },
    ),
    ctf.__dict__,
)
tu = types.ModuleType("train_util")
tu.__dict__.update(torch=tp, math=math, custom_train_functions=ctf, Optional=Optional, Tuple=Tuple)
exec(
    extract(
        "tu.py",
        {
            "get_timesteps",
            "get_noise_noisy_latents_and_timesteps",
            "get_huber_threshold_if_needed",
            "conditional_loss",
        },
    ),
    tu.__dict__,
)


def scheduler():
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )


def args(**kw):
    base = dict(
        noise_offset=None,
        noise_offset_random_strength=False,
        adaptive_noise_scale=None,
        multires_noise_iterations=None,
        multires_noise_discount=0.3,
        min_timestep=None,
        max_timestep=None,
        ip_noise_gamma=None,
        ip_noise_gamma_random_strength=False,
        loss_type="l2",
        huber_schedule="snr",
        huber_c=0.1,
        huber_scale=1.0,
        min_snr_gamma=None,
        scale_v_pred_loss_like_noise_pred=False,
        v_pred_like_loss=None,
        debiased_estimation_loss=False,
        v_parameterization=False,
    )
    base.update(kw)
    return types.SimpleNamespace(**base)


out = {}
inputs = torch.Generator().manual_seed(1234)
latents = torch.randn((4, 4, 8, 8), generator=inputs) * 0.8 + 0.2
pred = torch.randn((4, 4, 8, 8), generator=inputs)
target = torch.randn((4, 4, 8, 8), generator=inputs)
timesteps = torch.tensor([0, 17, 500, 999])
is_reg = torch.tensor([0.0, 1.0, 0.0, 1.0])
out.update(latents=latents, pred=pred, target=target, timesteps=timesteps, is_reg=is_reg)

NOISE_CASES = {
    "all": dict(
        noise_offset=0.1,
        noise_offset_random_strength=True,
        adaptive_noise_scale=0.5,
        multires_noise_iterations=6,
        multires_noise_discount=0.3,
        min_timestep=100,
        max_timestep=900,
        ip_noise_gamma=0.1,
        ip_noise_gamma_random_strength=True,
    ),
    "fixed": dict(
        noise_offset=0.05, adaptive_noise_scale=-0.2, ip_noise_gamma=0.1, min_timestep=500, max_timestep=500
    ),
    "multires": dict(multires_noise_iterations=10, multires_noise_discount=0.8, max_timestep=300),
    "off": dict(),
}
for i, (name, kw) in enumerate(NOISE_CASES.items()):
    GEN.manual_seed(100 + i)
    noise, noisy, t = tu.get_noise_noisy_latents_and_timesteps(args(**kw), scheduler(), latents.clone())
    out[f"noise.{name}.noise"], out[f"noise.{name}.noisy"], out[f"noise.{name}.timesteps"] = noise, noisy, t

LOSS_CASES = {
    "l2.eps.minsnr": dict(loss_type="l2", min_snr_gamma=5.0),
    "l1.eps.debiased": dict(loss_type="l1", debiased_estimation_loss=True),
    "huber_snr.eps.vlike": dict(
        loss_type="huber",
        huber_schedule="snr",
        huber_c=0.1,
        v_pred_like_loss=0.2,
        debiased_estimation_loss=True,
    ),
    "huber_exp.v.scale": dict(
        loss_type="huber",
        huber_schedule="exponential",
        huber_c=0.2,
        huber_scale=1.5,
        v_parameterization=True,
        scale_v_pred_loss_like_noise_pred=True,
        min_snr_gamma=5.0,
    ),
    "smooth_const.v.debiased": dict(
        loss_type="smooth_l1",
        huber_schedule="constant",
        huber_c=0.3,
        huber_scale=2.0,
        v_parameterization=True,
        debiased_estimation_loss=True,
    ),
    "smooth_snr.eps.all": dict(
        loss_type="smooth_l1",
        huber_schedule="snr",
        huber_c=0.05,
        min_snr_gamma=1.0,
        v_pred_like_loss=0.5,
        debiased_estimation_loss=True,
    ),
}
PRIOR_WEIGHT = 0.3
for name, kw in LOSS_CASES.items():
    a = args(**kw)
    sched = scheduler()
    ctf.prepare_scheduler_for_custom_training(sched, "cpu")
    huber_c = tu.get_huber_threshold_if_needed(a, timesteps, sched)
    loss = tu.conditional_loss(pred.float(), target.float(), a.loss_type, "none", huber_c)
    loss = loss.mean([1, 2, 3])
    loss = loss * torch.where(is_reg > 0, PRIOR_WEIGHT, 1.0)  # batch["loss_weights"]
    # train_network.py's post_process_loss, in its order
    if a.min_snr_gamma:
        loss = ctf.apply_snr_weight(loss, timesteps, sched, a.min_snr_gamma, a.v_parameterization)
    if a.scale_v_pred_loss_like_noise_pred:
        loss = ctf.scale_v_prediction_loss_like_noise_prediction(loss, timesteps, sched)
    if a.v_pred_like_loss:
        loss = ctf.add_v_prediction_like_loss(loss, timesteps, sched, a.v_pred_like_loss)
    if a.debiased_estimation_loss:
        loss = ctf.apply_debiased_estimation(loss, timesteps, sched, a.v_parameterization)
    out[f"loss.{name}.per_sample"] = loss
    out[f"loss.{name}.total"] = loss.mean().reshape(1)
    if huber_c is not None:
        out[f"loss.{name}.huber_c"] = huber_c

meta = {
    "source": f"kohya-ss/sd-scripts {COMMIT}",
    "made_by": "make_ref.py in a scratch folder (not in the repo)",
    "prior_loss_weight": str(PRIOR_WEIGHT),
}
save_file({k: v.contiguous() for k, v in out.items()}, "kohya_noise_loss.safetensors", metadata=meta)
print(len(out), "tensors")
for k, v in out.items():
    if "total" in k or "timesteps" in k:
        print(k, v.tolist())
