"""Caption processing in real tiny runs: captions drawn per sample and step (kohya's options), a resumed run
draws and trains exactly what an uninterrupted one does, and the text cache serves what the
plan says it can."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime import step as step_module
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec

CAPTIONS = {
    "toy-00": "ohwx toy, red, small, on a table",
    "toy-01": "ohwx toy, {blue|green}, studio light, close-up",
    "toy-02": "ohwx toy, wooden, outdoors, grass",
}


def spec_with_captions(tmp: Path, options: str, steps: int = 6) -> Path:
    spec = write_spec(tmp, steps=steps, dataset_extra='captions = "textfile"\n' + options)
    for image in sorted((tmp / "data" / "toy").iterdir()):
        if image.suffix in (".png", ".jpg"):
            text = CAPTIONS.get(image.stem, "ohwx toy, plain, white background")
            image.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    return spec


@pytest.fixture
def drawn(monkeypatch):
    """Every (step, epoch, captions) the step function draws, in order."""
    seen: list = []
    original = step_module.step_captions

    def record(plan, batch, *, step, epoch):
        out = original(plan, batch, step=step, epoch=epoch)
        seen.append((step, epoch, tuple(text for text, _ in out)))
        return out

    monkeypatch.setattr(step_module, "step_captions", record)
    return seen


class _TextEncodes:
    """Counts the step's text-encoder calls (not the cache fill's) and the captions they encode."""

    def __init__(self, monkeypatch):
        from dbspec.runtime.families import family_runtime

        self.captions: list[str] = []
        captions = self.captions

        class Counting:  # the family runtime step.py sees (cache_fill imports its own)
            def __init__(self, inner):
                self.inner = inner

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def encode_prompts(self, encoders, tokenizers, prompts, **kw):
                captions.extend(prompts)
                return self.inner.encode_prompts(encoders, tokenizers, prompts, **kw)

        monkeypatch.setattr(step_module, "family_runtime", lambda name: Counting(family_runtime(name)))


SHUFFLED = """
shuffle_caption = true
keep_tokens = 1
caption_tag_dropout_rate = 0.2
caption_dropout_rate = 0.3
enable_wildcard = true
"""


def _unet(folder: Path) -> dict:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_shuffled_and_dropped_captions_resume_bit_identical(tmp_path, drawn, monkeypatch):
    spec = spec_with_captions(tmp_path, SHUFFLED)
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    whole_captions = list(drawn)
    drawn.clear()
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=3)
    second = execute(plan, resume=True)
    assert first.steps == 3 and second.status == "finished" and second.steps == 6
    assert drawn == whole_captions  # the same captions at the same steps
    assert first.losses + second.losses == whole.losses
    a, b = _unet(Path(whole.final)), _unet(Path(second.final))
    assert all(torch.equal(a[k], b[k]) for k in a)
    texts = [t for _, _, batch in whole_captions for t in batch]
    assert "" in texts  # dropped
    kept = [t for t in texts if t]
    assert all(t.startswith("ohwx toy") for t in kept)  # keep_tokens = 1
    assert not any("{" in t for t in kept)  # wildcards chosen
    assert len(set(kept)) > len(CAPTIONS)  # shuffled / tags dropped: more texts than captions


def test_varying_captions_encode_every_step_and_fixed_ones_never(tmp_path, monkeypatch):
    spec = spec_with_captions(tmp_path, "caption_dropout_rate = 0.5\n", steps=4)
    plan = compile_spec(spec)
    p = plan.datasets[0].caption_processing
    assert p.varying_images == 0 and p.empty_text_key
    calls = _TextEncodes(monkeypatch)
    execute(plan)
    assert calls.captions == []  # every caption and the empty one came from the cache

    spec = spec_with_captions(tmp_path, "shuffle_caption = true\n", steps=4)
    plan = compile_spec(spec, ["output.dir=out2"])
    assert plan.datasets[0].caption_processing.varying_images == len(plan.datasets[0].images)
    calls = _TextEncodes(monkeypatch)
    execute(plan)
    assert len(calls.captions) == 4 * plan.schedule.batch_size  # the text encoder ran at every step


def test_every_n_epochs_empties_whole_epochs(tmp_path, drawn):
    spec = spec_with_captions(tmp_path, "caption_dropout_every_n_epochs = 2\n", steps=1)
    plan = compile_spec(spec, ["schedule.steps=0", "schedule.epochs=3"])
    execute(plan)
    by_epoch: dict = {}
    for _, epoch, texts in drawn:
        by_epoch.setdefault(epoch, []).extend(texts)
    assert sorted(by_epoch) == [1, 2, 3]
    assert all(t == "" for t in by_epoch[2]) and all(t for t in by_epoch[1] + by_epoch[3])
