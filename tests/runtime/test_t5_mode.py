"""train.text_encoder_mode (kohya's LoRA scripts: every text encoder in train mode under
--gradient_checkpointing): a frozen T5-XXL with dropout encodes one prompt differently at each call in "train"
mode and alike in "trained" / "eval" mode; a tiny-Flux LoRA run in "train" mode, its text cache off, resumes
bit-exact (the dropout draws come from torch's global generator, which checkpoints save and restore)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.prepare import configure_models, set_train_mode
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import once_per_session
from tests.runtime.runspec import assert_lora_resumes_bit_exact, compile_spec, summary_text, write_spec

EXTRA = """
[adapter]
kind = "lora"
rank = 2

[train]
text_encoder_mode = "train"
"""


@pytest.fixture(scope="module")
def flux_with_t5_dropout(tmp_path_factory) -> str:
    """The tiny Flux as a diffusers folder whose T5-XXL has dropout_rate 0.1, like the real T5-XXL's config
    (the built-in's is 0); made once, only read."""

    def make(folder: Path) -> None:
        pipe = build_pipeline("builtin:tiny-flux")
        pipe.text_encoder_2.config.dropout_rate = 0.1
        pipe.save_pretrained(folder / "flux")

    return str(once_per_session(tmp_path_factory, "tiny-flux-t5-dropout", make) / "flux")


def _spec(tmp: Path, base: str, steps: int) -> Path:
    spec = write_spec(tmp, base=base, steps=steps, extra=EXTRA)
    spec.write_text(spec.read_text().replace("[model]\n", '[model]\nfamily = "flux"\nt5_max_length = 8\n', 1))
    return spec


def test_train_mode_draws_t5_dropout_and_the_others_do_not(tmp_path, flux_with_t5_dropout):
    plan = compile_spec(_spec(tmp_path, flux_with_t5_dropout, 2))
    assert plan.text_encoder_mode == "train" and not plan.cache.text_embeddings
    assert any("T5-XXL encodes in train mode" in n for n in plan.cache.notes)
    assert "frozen; every encoder in train mode in training steps (T5-XXL's dropout on)" in summary_text(plan)
    family = family_runtime("flux")
    comps = family.load(plan)
    configure_models(plan, comps, torch.device("cpu"))

    def encodings(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        set_train_mode(comps, attrs.evolve(plan, text_encoder_mode=mode))
        with torch.no_grad():
            return tuple(
                family.encode_prompts(
                    comps.text_encoders,
                    comps.tokenizers,
                    ["a photo of ohwx toy"],
                    clip_skip=0,
                    max_tokens=75,
                    device=torch.device("cpu"),
                )["prompt_embeds"]
                for _ in range(2)
            )

    torch.manual_seed(0)
    first, second = encodings("train")
    assert comps.text_encoders[1].training and not torch.equal(first, second)
    for mode in ("trained", "eval"):  # T5 frozen: eval mode either way
        first, second = encodings(mode)
        assert not comps.text_encoders[1].training and torch.equal(first, second)


VALIDATION = """
[validation]
prompts = ["a photo of ohwx toy"]
every = 2
steps = 2
text_encoder_mode = "training"

[evaluation]
holdout = 1
timesteps = 2
bands = 1
"""


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@attrs.define
class _Out:
    output: Path


def test_train_mode_run_resumes_bit_exact(tmp_path, flux_with_t5_dropout):
    """With validation.text_encoder_mode = "training" (kohya's validation under gradient checkpointing) the
    evaluation loss and validation images encode with T5's dropout, seeded per evaluation and image: the
    run resumes bit-exact, its evaluations repeat after the resume, and its training losses are those of
    the same run validating in eval mode, whose evaluation loss and images differ (no dropout)."""
    spec = _spec(tmp_path, flux_with_t5_dropout, 4)
    spec.write_text(spec.read_text() + VALIDATION)
    assert "training-step mode (seeded dropout" in summary_text(compile_spec(spec))
    whole = assert_lora_resumes_bit_exact(spec)
    plain = execute(compile_spec(spec, ["output.dir=plain", "validation.text_encoder_mode=eval"]))
    assert plain.losses == whole.losses  # the validation's draws never reach the training stream
    ours, resumed, theirs = (
        [r["eval_loss"] for r in _metrics(run.output) if "eval_loss" in r]
        for run in (whole, _Out(tmp_path / "parts"), plain)
    )
    assert len(ours) == 2 and resumed[-2:] == ours  # seeded per evaluation: the resume repeats them
    assert all(a != b for a, b in zip(ours, theirs))  # T5's dropout on in "training" mode only
    grid = "samples/step-000002/p00-i00.png"
    assert (Path(whole.output) / grid).read_bytes() != (Path(plain.output) / grid).read_bytes()
