"""Evaluation (runtime/evaluate.py): the metric maths against hand computations, the built-in tiny CLIP and
DINO, the stable evaluation loss against an independent computation and across runs and resume, the
metrics.jsonl rows, the per-checkpoint table and the best pointer, and `dbspec sample --checkpoint best`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from dbspec.runtime import checkpoints as ckpt
from dbspec.runtime.data import load_example
from dbspec.runtime.evaluate import (
    RunningMean,
    band_means,
    clip_image_embeddings,
    clip_text_embeddings,
    dino_embeddings,
    kohya_running_mean,
    mean_pairwise_similarity,
    paired_similarity,
)
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.tiny import build_metric_model
from tests.runtime.runspec import compile_spec, write_spec

LORA = '[adapter]\nkind = "lora"\nrank = 2\n'
VALIDATION = (
    '[validation]\nevery = 1\nsteps = 2\nprompts = ["a photo of ohwx toy on a table", "a photo of a toy"]\n'
)
METRICS = (
    '[evaluation]\nholdout = 1\ntimesteps = 4\nbands = 2\nmetrics = ["clip_t", "clip_i", "dino"]\n'
    'clip_model = "builtin:tiny-clip"\ndino_model = "builtin:tiny-dino"\n'
)


# --- the maths, on fixed embeddings ---------------------------------------------------------------------
def test_mean_pairwise_similarity_is_the_mean_cosine_over_all_pairs():
    generated = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    real = torch.tensor([[0.0, 1.0], [1.0, 0.0], [3.0, 4.0]])
    r2 = math.sqrt(2)
    by_hand = (0 + 1 + 3 / 5 + 1 / r2 + 1 / r2 + 7 / (5 * r2)) / 6
    assert mean_pairwise_similarity(generated, real) == pytest.approx(by_hand, abs=1e-12)


def test_paired_similarity_scores_each_image_with_its_own_prompt_only():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    texts = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    assert paired_similarity(images, texts) == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-12)


def test_band_means_average_each_contiguous_slice():
    assert band_means([1.0, 2.0, 3.0, 4.0, 5.0], [0, 2]) == [1.5, 4.0]
    assert band_means([2.0, 4.0], [0]) == [3.0]


# --- the built-in tiny models -----------------------------------------------------------------------------
def test_kohya_running_mean_is_kohyas_validation_loss_recorder():
    """evaluation.log = "kohya_running_mean", by hand from kohya's LossRecorder.add as train_network.py feeds
    it (epoch 0-based, the position counted from 0 in each validation): epoch 0 appends, later epochs write
    over the entry at the position, the total updated in place in the same order."""
    record = RunningMean()
    a, b, c, d, e, f, g = 0.1, 0.7, 0.3, 0.9, 0.25, 0.05, 0.6
    assert kohya_running_mean(record, [a, b], epoch=0) == (0.0 + a + b) / 2
    total = 0.0 + a + b + c + d
    assert kohya_running_mean(record, [c, d], epoch=0) == total / 4  # runs on over both validations
    total = total - a + e - b + f  # epoch 1: positions 0 and 1 written over, c and d stay
    assert kohya_running_mean(record, [e, f], epoch=1) == total / 4 and record.losses == [e, f, c, d]
    total = total - e + g
    assert kohya_running_mean(record, [g], epoch=2) == total / 4 and record.losses == [g, f, c, d]
    # no validation in epoch 0: the list is padded with zeros up to the position, then written over
    late = RunningMean()
    assert kohya_running_mean(late, [a, b], epoch=1) == (0.0 - 0.0 + a - 0.0 + b) / 2
    assert late.losses == [a, b]
    # a checkpoint keeps the list and the total as they are (not re-summed)
    again = RunningMean()
    again.restore(record.state())
    assert again.losses == record.losses and again.total == record.total
    assert RunningMean().state() is None and RunningMean().mean == 0.0


def test_tiny_clip_and_dino_are_deterministic_and_embed_images_and_prompts():
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    state = torch.random.get_rng_state()
    clip, processor = build_metric_model("builtin:tiny-clip")
    again, _ = build_metric_model("builtin:tiny-clip")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), again.state_dict().values()))
    device = torch.device("cpu")
    assert clip_image_embeddings(clip, processor, [image, image], device).shape == (2, 16)
    assert clip_text_embeddings(clip, processor, ["a photo of a toy"], device).shape == (1, 16)
    dino, dino_processor = build_metric_model("builtin:tiny-dino")
    assert dino_embeddings(dino, dino_processor, [image], device).shape == (1, 32)


# --- runs --------------------------------------------------------------------------------------------------
def _rows(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "eval_loss" in row or "dino" in row]


def test_eval_loss_is_the_training_formula_on_fixed_timesteps_and_noise(tmp_path):
    """An independent computation with diffusers' scheduler and the trained models: VAE posterior mean,
    noise from a generator seeded by evaluation.seed, min-SNR weights min(snr, 5) / snr, epsilon target."""
    extra = LORA + "[loss]\nmin_snr_gamma = 5.0\n[validation]\nevery = 1\n"
    extra += "[evaluation]\nholdout = 1\nseed = 3\ntimesteps = 4\nbands = 2\n"
    plan = compile_spec(write_spec(tmp_path, steps=2, extra=extra))
    result = execute(plan, keep_models=True)
    row = _rows(Path(result.output))[-1]
    assert row["step"] == 2 and set(row) == {"step", "eval_loss", "eval_loss_bands"}

    comps, ev = result.components, plan.evaluation
    img = ev.holdout[0]
    with torch.no_grad():
        pixels, _ = load_example(img)
        latents = comps.vae.encode(pixels[None]).latent_dist.mean * comps.vae.config.scaling_factor
        ids = comps.tokenizers[0](
            [img.caption], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        text = comps.text_encoders[0](ids)[0].expand(4, -1, -1)
        t = torch.tensor(ev.timesteps)
        noise = torch.randn((4, *latents.shape[1:]), generator=torch.Generator().manual_seed(3))
        sched = comps.noise_scheduler
        noisy = sched.add_noise(latents.expand(4, -1, -1, -1), noise, t)
        comps.unet.eval()
        pred = comps.unet(noisy, t, text).sample
    mse = ((pred.double() - noise.double()) ** 2).mean(dim=(1, 2, 3))
    ac = sched.alphas_cumprod.double()[t]
    snr = ac / (1 - ac)
    losses = (mse * torch.clamp(snr, max=5.0) / snr).tolist()
    assert row["eval_loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert row["eval_loss_bands"] == pytest.approx([sum(losses[:2]) / 2, sum(losses[2:]) / 2], rel=1e-5)


def test_eval_loss_on_flow_matching_is_the_training_formula(tmp_path):
    """SD3 (a VAE with a shift_factor, a scheduler without DDPM alphas): latents (mean - shift) x scale,
    sigma = t / 1000, x_t = (1 - sigma) x0 + sigma noise, velocity target noise - x0, sigma_sqrt weights."""
    extra = LORA + '[loss]\nflow_weighting = "sigma_sqrt"\n[validation]\nevery = 1\n'
    extra += "[evaluation]\nholdout = 1\nseed = 3\ntimesteps = 4\nbands = 2\n"
    plan = compile_spec(write_spec(tmp_path, base="builtin:tiny-sd3", steps=1, extra=extra))
    result = execute(plan, keep_models=True)
    row = _rows(Path(result.output))[-1]

    comps, ev = result.components, plan.evaluation
    img, vae = ev.holdout[0], comps.vae
    assert vae.config.shift_factor  # the case that matters
    with torch.no_grad():
        pixels, _ = load_example(img)
        mean = vae.encode(pixels[None]).latent_dist.mean
        x0 = ((mean - vae.config.shift_factor) * vae.config.scaling_factor).expand(4, -1, -1, -1)
        text = family_runtime("sd3").encode_prompts(
            comps.text_encoders, comps.tokenizers, [img.caption], clip_skip=1, max_tokens=75, device="cpu"
        )
        t = torch.tensor(ev.timesteps)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
        sigma = (t.double() / 1000).view(-1, 1, 1, 1)
        noisy = ((1 - sigma) * x0.double() + sigma * noise.double()).float()
        comps.unet.eval()
        pred = comps.unet(
            hidden_states=noisy,
            timestep=t,
            encoder_hidden_states=text["prompt_embeds"].expand(4, -1, -1),
            pooled_projections=text["pooled"].expand(4, -1),
        ).sample
    mse = ((pred.double() - (noise.double() - x0.double())) ** 2).mean(dim=(1, 2, 3))
    losses = (mse * sigma.flatten() ** -2.0).tolist()
    assert row["eval_loss"] == pytest.approx(sum(losses) / 4, rel=1e-4)
    assert row["eval_loss_bands"] == pytest.approx([sum(losses[:2]) / 2, sum(losses[2:]) / 2], rel=1e-4)


def test_metrics_are_identical_across_runs_and_unchanged_by_resume(tmp_path):
    extra = LORA + VALIDATION + METRICS + "[checkpoints]\nevery = 1\nkeep = 0\n"
    spec = write_spec(tmp_path, steps=4, with_class=True, extra=extra)
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    again = execute(compile_spec(spec, ["output.dir=again"]))
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert first.losses + second.losses == whole.losses == again.losses  # evaluation leaves training alone
    rows = _rows(Path(whole.output))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"step", "eval_loss", "eval_loss_bands", "clip_t", "clip_i", "dino"}
    assert len(rows[0]["eval_loss_bands"]) == 2
    assert rows == _rows(Path(again.output)) == _rows(Path(second.output))
    assert rows[0]["eval_loss"] != rows[-1]["eval_loss"]  # the weights changed; the number follows them
    table = json.loads((Path(whole.output) / "checkpoints" / "metrics.json").read_text())
    assert [table[f"step-{r['step']:06d}"] for r in rows] == rows


def test_best_is_the_checkpoint_with_the_best_metric_and_survives_pruning(tmp_path):
    extra = LORA + VALIDATION + METRICS + '[checkpoints]\nevery = 1\nkeep = 1\nselect = "eval_loss"\n'
    plan = compile_spec(write_spec(tmp_path, steps=4, with_class=True, extra=extra))
    out = Path(execute(plan).output)
    rows = _rows(out)
    best = min(rows, key=lambda r: r["eval_loss"])  # lower is better
    record = json.loads((out / "checkpoints" / "best.json").read_text())
    assert record == {
        "checkpoint": f"step-{best['step']:06d}",
        "step": best["step"],
        "metric": "eval_loss",
        "value": best["eval_loss"],
    }
    assert ckpt.best_checkpoint(out) == out / "checkpoints" / record["checkpoint"]
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept == sorted({"step-000004", record["checkpoint"]})


def _save(out: Path, step: int, scores: dict, select: str, keep: int) -> None:
    ckpt.save_checkpoint(
        out,
        step,
        weights=lambda folder: (folder / "w.txt").write_text(str(step)),
        state={"step": step},
        keep=keep,
        scores={"step": step, **scores},
        select=select,
    )


@pytest.mark.parametrize(
    ("select", "values", "best_step"),
    [("dino", [0.5, 0.9, 0.7, 0.8], 2), ("eval_loss", [0.3, 0.2, 0.25, 0.2], 2), ("clip_t", [0.1] * 4, 1)],
)
def test_best_moves_only_on_a_strict_improvement_and_keep_k_never_deletes_it(
    tmp_path, select, values, best_step
):
    for step, value in enumerate(values, start=1):
        _save(tmp_path, step, {select: value}, select, keep=1)
    root = tmp_path / "checkpoints"
    assert (root / "best").read_text() == f"step-{best_step:06d}\n"
    assert json.loads((root / "best.json").read_text())["value"] == values[best_step - 1]
    steps = sorted(p.name for p in root.iterdir() if p.name.startswith("step-"))
    assert steps == sorted({f"step-{best_step:06d}", "step-000004"})
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-000004"


def test_sample_renders_the_best_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from dbspec.cli import app

    extra = LORA + VALIDATION + METRICS + '[checkpoints]\nevery = 1\nkeep = 1\nselect = "dino"\n'
    plan = compile_spec(write_spec(tmp_path, steps=2, with_class=True, extra=extra))
    out = Path(execute(plan).output)
    args = ["sample", str(out), "-p", "a photo of ohwx toy", "--steps", "2", "--size", "64"]
    result = CliRunner().invoke(app, [*args, "--checkpoint", "best", "-o", str(tmp_path / "best")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "best" / "grid.png").is_file()
    result = CliRunner().invoke(app, [*args, "--checkpoint", "step-000009", "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "has no checkpoint 'step-000009'" in result.output


def test_an_eval_dataset_is_scored_at_each_validation_step(tmp_path):
    import shutil

    path = write_spec(tmp_path, steps=2, extra=LORA + "[validation]\nevery = 1\n")
    (tmp_path / "data" / "eval").mkdir()
    shutil.copy(tmp_path / "data" / "toy" / "toy-00.png", tmp_path / "data" / "eval" / "held.png")
    path.write_text(
        path.read_text()
        + '\n[[datasets]]\nname = "held"\nrole = "eval"\npath = "data/eval"\nprompt = "a photo of ohwx toy"\n'
        "resolution = 64\n"
    )
    out = Path(execute(compile_spec(path)).output)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2] and all(len(r["eval_loss_bands"]) == 4 for r in rows)
