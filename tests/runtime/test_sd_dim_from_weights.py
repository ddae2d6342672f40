"""kohya --dim_from_weights with networks.lora and per-module ranks (create_network_from_weights: each module
of the file at its own rank and alpha, none where the file has none): a tiny SD run's kohya export, one module
cut to rank 1 with another alpha and one module dropped, started through the converter's blocks
(dbspec/convert/kohya/file_ranks.py's sd_blocks): every adapter holds the file's tensors at the file's rank,
the dropped module has no LoRA, and the run trains and resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dbspec.compiler.lora_file import read_lora_file
from dbspec.convert.kohya.file_ranks import sd_blocks
from dbspec.runtime.families import family_runtime
from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import compile_spec, write_spec, assert_lora_resumes_bit_exact
from tests.runtime.test_init_weights import _first_export


def _per_module_file(export: Path) -> tuple[Path, str, str]:
    state = load_file(str(export))
    unet = sorted({k.split(".")[0] for k in state if k.startswith("lora_unet_")})
    cut, dropped = unet[0], unet[1]
    state[f"{cut}.lora_down.weight"] = state[f"{cut}.lora_down.weight"][:1].clone()
    state[f"{cut}.lora_up.weight"] = state[f"{cut}.lora_up.weight"][:, :1].clone()
    state[f"{cut}.alpha"] = torch.tensor(0.5)
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        state.pop(dropped + suffix, None)
    path = export.with_name("per-module.safetensors")
    save_file(state, str(path))
    return path, cut, dropped


def _spec(tmp_path: Path, path: Path, steps: int) -> Path:
    text = f'[adapter]\nkind = "lora"\nrank = 2\nalpha = 1.0\ninit_weights = "{path}"\ninit_partial = true\n'
    for block in sd_blocks(read_lora_file(path)):
        text += f"\n[[adapter.blocks]]\npattern = '{block['pattern']}'\nrank = {block['rank']}\n"
        text += f"alpha = {block['alpha']}\n"
    text += "\n[train]\ntext_encoder = true\n\n[checkpoints]\nevery = 2\n"
    return write_spec(tmp_path / "second", steps=steps, extra=text)


def test_each_module_starts_at_its_file_rank_and_the_missing_one_has_none(tmp_path):
    path, cut, dropped = _per_module_file(_first_export(tmp_path))
    plan = compile_spec(_spec(tmp_path, path, 2), ["optimizer.lr=1e-2"])
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    saved = load_file(str(path))
    assert load_init_weights(plan, comps.unet, comps.text_encoders) == len({k.split(".")[0] for k in saved})
    layers = {
        "lora_unet_" + n.replace(".", "_"): m for n, m in comps.unet.named_modules() if hasattr(m, "lora_A")
    }
    assert dropped not in layers or "default" not in layers[dropped].lora_A  # kohya builds no LoRA there
    layer = layers[cut]
    assert layer.r["default"] == 1 and layer.scaling["default"] == 0.5  # the file's rank and alpha
    assert torch.equal(layer.lora_A["default"].weight.detach(), saved[f"{cut}.lora_down.weight"].float())


def test_a_per_module_run_resumes_bit_exact(tmp_path):
    path, _, _ = _per_module_file(_first_export(tmp_path))
    spec = _spec(tmp_path, path, 4)
    assert_lora_resumes_bit_exact(spec)
