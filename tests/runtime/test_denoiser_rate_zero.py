"""optimizer.lr = 0 with train.denoiser = true (kohya train_db.py's learning_rate 0 with learning_rate_te):
the denoiser sits in the optimizer at rate 0. Its weights never move, but its gradients count in the clip
norm, so the text encoder's step is clipped by the norm over both. One-step SGD runs (no momentum or decay)
move each trained weight by exactly minus its (clipped) gradient times its rate: the steps show the clip."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec

TOL = 1e-3  # relative: fp32 weights round each applied update (the difference is taken in fp64)
TE = "[train]\ntext_encoder = true\n"
SGD = ['optimizer.kind="sgd"', "optimizer.momentum=0.0", "optimizer.weight_decay=0.0"]


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in module.parameters()])


def _step(tmp_path, name: str, overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the U-Net's step, the text encoder's step) of a one-step run."""
    plan = compile_spec(write_spec(tmp_path / name, steps=1, extra=TE), [*SGD, *overrides])
    result = execute(plan, keep_models=True)
    before = build_pipeline("builtin:tiny-sd1")
    c = result.components
    return _flat(c.unet) - _flat(before.unet), _flat(c.text_encoders[0]) - _flat(before.text_encoder)


def test_the_denoiser_at_rate_zero_stays_bit_identical_and_its_gradients_clip_the_text_encoders(tmp_path):
    # both at rate 1, unclipped: the steps are minus the raw gradients
    g_unet, g_te = _step(tmp_path, "raw", ["optimizer.lr=1.0", "optimizer.max_grad_norm=0"])
    g_unet, g_te = -g_unet, -g_te
    total = torch.sqrt(g_unet.square().sum() + g_te.square().sum())
    limit = float(total) / 4  # the clip binds: the steps shrink 4-fold, and stay far above fp32's rounding
    clip = [f"optimizer.max_grad_norm={limit!r}", "optimizer.text_encoder_lr=1.0"]
    # the denoiser at rate 0: frozen weights, but its gradients count in the norm (torch's clip_grad_norm_
    # scales by max_norm / (total + 1e-6))
    plan = compile_spec(write_spec(tmp_path / "zero", steps=1, extra=TE), [*SGD, *clip, "optimizer.lr=0"])
    assert plan.optimizer.lr == 0 and plan.train_denoiser
    assert "lr 0 (the denoiser held: gradients computed and clipped, weights still)" in summary_text(plan)
    result = execute(plan, keep_models=True)
    before = build_pipeline("builtin:tiny-sd1")
    for a, b in zip(result.components.unet.parameters(), before.unet.parameters(), strict=True):
        assert torch.equal(a.detach(), b.detach())
    te_zero = _flat(result.components.text_encoders[0]) - _flat(before.text_encoder)
    expected = -g_te * (limit / (total + 1e-6))
    assert torch.linalg.vector_norm(te_zero - expected) <= TOL * torch.linalg.vector_norm(expected)
    # the denoiser frozen: the text encoder's gradient is clipped by its own norm, a longer step
    _, te_alone = _step(tmp_path, "frozen", [*clip, "train.denoiser=false"])
    te_norm = torch.linalg.vector_norm(g_te)
    alone = -g_te * min(1.0, limit / (te_norm + 1e-6))
    assert torch.linalg.vector_norm(te_alone - alone) <= TOL * torch.linalg.vector_norm(alone)
    # the two runs' steps differ exactly by the ratio of the clip factors
    ratio = torch.linalg.vector_norm(te_zero) / torch.linalg.vector_norm(te_alone)
    assert abs(ratio - min(1.0, limit / (total + 1e-6)) / min(1.0, limit / (te_norm + 1e-6))) < TOL * ratio
    assert ratio < 0.99  # the U-Net's gradients made the text encoder's step shorter


def test_adamw_with_decay_holds_the_denoiser_still_and_resumes_bit_exact(tmp_path):
    """AdamW decays by p x (1 - lr x weight_decay) = p x 1 at rate 0: the denoiser stays bit-identical; an
    interrupted run resumes to the uninterrupted run's weights."""
    spec = write_spec(tmp_path, steps=4, extra=TE)
    settings = ["optimizer.lr=0", "optimizer.text_encoder_lr=1e-3", "optimizer.weight_decay=0.1"]
    whole = execute(compile_spec(spec, [*settings, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and len(whole.losses) == 4
    plan = compile_spec(spec, [*settings, "output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = build_pipeline("builtin:tiny-sd1")
    kept = whole.components
    for x, y in zip(kept.unet.parameters(), base.unet.parameters(), strict=True):
        assert torch.equal(x.detach(), y.detach())
    assert not torch.equal(_flat(kept.text_encoders[0]), _flat(base.text_encoder))  # the text encoder trained


@pytest.mark.parametrize(
    "kind",
    ["adamw8bit", "adafactor", "radam", "lion", "lion8bit", "ademamix", "sgd"],
)
def test_every_optimizer_allowed_at_rate_zero_holds_the_denoiser_bit_identical(tmp_path, kind):
    """The kinds DBS200 lets through scale both their step and their decoupled weight decay by the group's
    rate: two steps with decay (and momentum for sgd) leave the denoiser bit-identical."""
    settings = [f'optimizer.kind="{kind}"', "optimizer.lr=0", "optimizer.weight_decay=0.1"]
    settings += ["optimizer.text_encoder_lr=1e-3", *(["optimizer.momentum=0.9"] if kind == "sgd" else [])]
    plan = compile_spec(write_spec(tmp_path, steps=2, extra=TE), settings)
    kept = execute(plan, keep_models=True).components
    base = build_pipeline("builtin:tiny-sd1")
    for x, y in zip(kept.unet.parameters(), base.unet.parameters(), strict=True):
        assert torch.equal(x.detach(), y.detach())
    assert not torch.equal(_flat(kept.text_encoders[0]), _flat(base.text_encoder))
