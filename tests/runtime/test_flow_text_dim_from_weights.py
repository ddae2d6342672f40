"""kohya --dim_from_weights with a Flux / SD3 file whose text-encoder modules differ in rank
(networks/lora_flux.py, lora_sd3.py create_network_from_weights: each CLIP-L, CLIP-G and T5-XXL module of
the file at its own rank and alpha, none where the file has none, train_t5xxl on from a lora_te3 name). The
converter's [[adapter.text_encoder_blocks]] (dbspec/convert/kohya/file_ranks.py) start a tiny run whose text
encoders hold a LoRA on exactly the file's modules, each at the file's rank and alpha with its tensors (SD3's
CLIP-G, which the file leaves out, trains none: train.text_encoder_2 = false, as the converter writes); it
trains and resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dbspec.compiler.lora_file import read_lora_file
from dbspec.convert.kohya.file_ranks import (
    common_pair,
    flow_blocks,
    flow_components,
    per_module_text_blocks,
)
from dbspec.families import family_spec, flow_text_prefixes
from dbspec.runtime.execute import execute
from dbspec.runtime.exports import clip_path
from dbspec.runtime.families import family_runtime
from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import compile_spec, write_spec

BASES = {"flux": "builtin:tiny-flux", "sd3": "builtin:tiny-sd3"}
# one denoiser module of the file: kohya name -> diffusers path
UNET = {
    "flux": ("double_blocks_0_img_attn_proj", "transformer_blocks.0.attn.to_out.0"),
    "sd3": ("joint_blocks_0_x_block_attn_proj", "transformer_blocks.0.attn.to_out.0"),
}
CLIP = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
T5 = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
# (rank, alpha) of the n-th text-encoder Linear of a kohya target: rank 0 leaves it out of the file
PAIRS = ((2, 1.0), (3, 1.5), (0, 0.0), (1, 1.0), (2, 2.0))


def _base(tmp_path: Path, family: str):
    plan = compile_spec(write_spec(tmp_path / "base", base=BASES[family], steps=1))
    return family_runtime(family).load(plan)


def _kohya_path(prefix: str, path: str) -> str:
    # kohya's names: CLIPTextModel's paths with text_model., T5EncoderModel's as they are
    return prefix + (path if prefix == "lora_te3_" else clip_path(path)).replace(".", "_")


def _file(tmp_path: Path, family: str) -> tuple[Path, dict[str, tuple[int, float]]]:
    """A kohya file of the tiny model: one denoiser module, the text-encoder targets at PAIRS' ranks in turn
    (some left out), SD3's CLIP-G (lora_te2) left out whole; random downs and ups. Returns the file and each
    text-encoder module's (rank, alpha)."""
    comps = _base(tmp_path, family)
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, tuple[int, float]] = {}

    def add(name: str, layer: torch.nn.Linear, rank: int, alpha: float) -> None:
        state[f"{name}.lora_down.weight"] = torch.randn((rank, layer.in_features), generator=generator)
        state[f"{name}.lora_up.weight"] = torch.randn((layer.out_features, rank), generator=generator) * 0.01
        state[f"{name}.alpha"] = torch.tensor(alpha)

    kohya, path = UNET[family]
    add(f"lora_unet_{kohya}", comps.unet.get_submodule(path), 2, 1.0)
    turn = 0
    for prefix, encoder in zip(flow_text_prefixes(family), comps.text_encoders):
        if prefix == "lora_te2_":
            continue  # kohya builds no LoRA on an encoder the file has no module of
        targets = T5 if prefix == "lora_te3_" else CLIP
        for path, layer in encoder.named_modules():
            if not isinstance(layer, torch.nn.Linear) or not path.endswith(tuple("." + t for t in targets)):
                continue
            rank, alpha = PAIRS[turn % len(PAIRS)]
            turn += 1
            if rank:
                add(_kohya_path(prefix, path), layer, rank, alpha)
                ranks[_kohya_path(prefix, path)] = (rank, alpha)
    assert {r for r, _ in ranks.values()} == {1, 2, 3} and any(n.startswith("lora_te3_") for n in ranks)
    file = tmp_path / f"{family}-per-module.safetensors"
    save_file(state, str(file))
    return file, ranks


def _spec(tmp_path: Path, family: str, file: Path, steps: int) -> Path:
    lora = read_lora_file(file)
    blocks, extra = flow_blocks(lora, family)
    text = per_module_text_blocks(lora, flow_components(family))
    assert text and text[-1] == {"pattern": "^", "rank": 0, "alpha": 1.0}
    rank, alpha = common_pair(lora, prefixes=tuple(flow_components(family)))
    targets = ", ".join(f'"{t}"' for t in (*family_spec(family).kohya_lora_targets, *extra))
    out = (
        f'[adapter]\nkind = "lora"\nrank = {rank}\nalpha = {alpha}\nfused_projections = true\n'
        f'init_partial = true\ninit_weights = "{file}"\ndenoiser_targets = [{targets}]\n'
        f"text_encoder_targets = {list(CLIP)!r}\n".replace("'", '"')
    )
    for block in blocks:
        out += f"\n[[adapter.blocks]]\npattern = '{block['pattern']}'\nrank = {block['rank']}\n"
        out += f"alpha = {block['alpha']}\n"
    for block in text:
        out += f"\n[[adapter.text_encoder_blocks]]\npattern = '{block['pattern']}'\nrank = {block['rank']}\n"
        out += f"alpha = {block['alpha']}\n"
    out += "\n[train]\ntext_encoder = true\nt5 = true\n"
    out += "text_encoder_2 = false\n" if family == "sd3" else ""  # CLIP-G: no module in the file
    out += "\n[checkpoints]\nevery = 2\n"
    return write_spec(tmp_path / "second", base=BASES[family], steps=steps, extra=out)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_each_text_encoder_module_starts_at_its_file_rank_and_no_other_has_a_lora(tmp_path, family):
    file, ranks = _file(tmp_path, family)
    plan = compile_spec(_spec(tmp_path, family, file, 2), ["optimizer.lr=1e-2"])
    assert plan.adapter.text_encoder_blocks and plan.adapter.t5_targets == T5
    comps = family_runtime(family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    assert load_init_weights(plan, comps.unet, comps.text_encoders) == len(ranks) + 1  # + the denoiser's
    saved = load_file(str(file))
    found: dict[str, tuple[int, float]] = {}
    for prefix, encoder in zip(flow_text_prefixes(family), comps.text_encoders):
        for path, layer in encoder.named_modules():
            if not hasattr(layer, "lora_A") or "default" not in layer.lora_A:
                continue
            key = _kohya_path(prefix, path)
            rank = layer.r["default"]
            found[key] = (rank, layer.scaling["default"] * rank)
            assert torch.equal(layer.lora_A["default"].weight.detach(), saved[f"{key}.lora_down.weight"]), key
            assert torch.equal(layer.lora_B["default"].weight.detach(), saved[f"{key}.lora_up.weight"]), key
    assert found.keys() == ranks.keys()  # exactly the file's modules: kohya builds none elsewhere
    for key, (rank, alpha) in ranks.items():
        assert found[key][0] == rank and abs(found[key][1] - alpha) < 1e-6, key


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_run_with_text_encoder_modules_at_several_ranks_resumes_bit_exact(tmp_path, family):
    file, _ = _file(tmp_path, family)
    spec = _spec(tmp_path, family, file, 4)
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=2)
    resumed = execute(plan, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    for name in ("pytorch_lora_weights.safetensors",):
        ours = load_file(str(Path(whole.final) / name))
        theirs = load_file(str(Path(resumed.final) / name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
