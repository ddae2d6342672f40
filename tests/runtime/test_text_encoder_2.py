"""train.text_encoder_2 = false: a tiny SDXL full fine-tune trains the first text encoder and leaves the
second exactly as loaded (kohya's sdxl_train.py with learning_rate_te2 = 0)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def test_sdxl_full_finetune_freezes_the_second_text_encoder(tmp_path):
    spec = write_spec(
        tmp_path,
        base="builtin:tiny-sdxl",
        steps=2,
        extra="[train]\ntext_encoder = true\ntext_encoder_2 = false\n",
    )
    plan = compile_spec(spec, ["optimizer.lr=1e-3"])
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert (trainable["text_encoder"], trainable["text_encoder_2"]) == ("full", "frozen")
    result = execute(plan)
    base = build_pipeline("builtin:tiny-sdxl")
    final = Path(result.final)
    first = _weights(final / "text_encoder")
    base_first = base.text_encoder.state_dict()
    assert any(not torch.equal(v.float(), base_first[k].float()) for k, v in first.items())
    base_second = base.text_encoder_2.state_dict()
    second = _weights(final / "text_encoder_2")  # the saved pipeline holds it, unchanged
    assert second and all(torch.equal(v.float(), base_second[k].float()) for k, v in second.items())


def test_sdxl_lora_with_the_second_text_encoder_frozen_saves_and_exports_no_adapter_for_it(tmp_path):
    spec = write_spec(
        tmp_path,
        base="builtin:tiny-sdxl",
        steps=2,
        extra='[adapter]\nkind = "lora"\nrank = 2\n[train]\ntext_encoder = true\ntext_encoder_2 = false\n'
        '[checkpoints]\nexports = ["kohya_lora"]\n',
    )
    plan = compile_spec(spec, ["optimizer.lr=1e-4"])
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert (trainable["text_encoder"], trainable["text_encoder_2"]) == ("lora", "frozen")
    result = execute(plan)
    final = Path(result.final)
    prefixes = {k.split(".")[0] for k in load_file(str(final / "pytorch_lora_weights.safetensors"))}
    assert {"unet", "text_encoder"} <= prefixes and "text_encoder_2" not in prefixes
    (kohya,) = final.glob("*.kohya.safetensors")
    keys = set(load_file(str(kohya)))
    assert any(k.startswith("lora_te1_") for k in keys) and not any(k.startswith("lora_te2_") for k in keys)
    build_pipeline("builtin:tiny-sdxl").load_lora_weights(result.final)  # diffusers accepts the file


def test_sdxl_second_text_encoder_trains_alone_and_resumes_bit_exact(tmp_path):
    """train.text_encoder = false, text_encoder_2 = true (kohya sdxl_train.py with learning_rate_te1 = 0): the
    first encoder stays as loaded, the second trains, and an interrupted run resumes to the same weights."""
    spec = write_spec(
        tmp_path,
        base="builtin:tiny-sdxl",
        steps=4,
        extra="[train]\ntext_encoder = false\ntext_encoder_2 = true\n",
    )
    whole = execute(compile_spec(spec, ["optimizer.lr=1e-3", "output.dir=whole"]))
    plan = compile_spec(spec, ["optimizer.lr=1e-3", "output.dir=parts"])
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert (trainable["text_encoder"], trainable["text_encoder_2"]) == ("frozen", "full")
    assert execute(plan, stop_after=2).status == "interrupted"
    resumed = execute(plan, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4
    base = build_pipeline("builtin:tiny-sdxl")
    for name, moved in (("text_encoder", False), ("text_encoder_2", True), ("unet", True)):
        ours = _weights(Path(whole.final) / name)
        theirs = _weights(Path(resumed.final) / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
        before = getattr(base, name).state_dict()
        changed = any(not torch.equal(v.float(), before[k].float()) for k, v in ours.items())
        assert changed == moved, name
