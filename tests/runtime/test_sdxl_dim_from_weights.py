"""kohya --dim_from_weights with an SDXL file at per-module ranks (networks/lora.py
create_network_from_weights: each module of the file at its own rank and alpha, none where the file has none).
kohya names SDXL's U-Net modules in the original layout (`input_blocks_4_1_...`); the converter's blocks
(file_ranks.sd_blocks with original_names, over dbspec.unet_layout) put them on diffusers' paths: a tiny SDXL
run holds a LoRA on exactly the file's modules, linears and 3x3 convolutions each at the file's rank and alpha
with the file's tensors (the text encoders' modules too, at several ranks: [[adapter.text_encoder_blocks]]),
and trains and resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dbspec.compiler.lora_file import read_lora_file
from dbspec.convert.kohya.file_ranks import sd_blocks, text_blocks
from dbspec.runtime.exports import kohya_parts
from dbspec.runtime.families import family_runtime
from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import compile_spec, write_spec, assert_lora_resumes_bit_exact

# diffusers path -> (rank, alpha or None: kohya then takes the rank)
UNET = {
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (3, 1.5),
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k": (1, None),
    "up_blocks.0.attentions.1.transformer_blocks.1.ff.net.2": (2, 2.0),
    "mid_block.attentions.0.proj_in": (2, 1.0),
    "down_blocks.0.resnets.0.time_emb_proj": (2, 1.0),
    "down_blocks.0.resnets.0.conv1": (2, 1.0),  # 3x3 convolutions at three ranks
    "down_blocks.0.downsamplers.0.conv": (3, 1.5),
    "up_blocks.0.upsamplers.0.conv": (1, 1.0),
    "up_blocks.1.resnets.2.conv2": (2, 1.0),
}
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# (kohya prefix, transformers path) -> (rank, alpha or None); 0: not in the file; others rank 2, alpha 1
TEXT = {
    ("lora_te1", "text_model.encoder.layers.0.self_attn.q_proj"): (3, 1.5),
    ("lora_te2", "text_model.encoder.layers.1.mlp.fc2"): (1, None),
    ("lora_te2", "text_model.encoder.layers.1.self_attn.k_proj"): (0, None),
}


def _base(tmp_path: Path):
    plan = compile_spec(write_spec(tmp_path / "base", base="builtin:tiny-sdxl", steps=1))
    return family_runtime(plan.model.family).load(plan), plan.model.family


def _file(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, float]]]:
    """A kohya SDXL LoRA of the tiny model: UNET's modules under their original-layout names, the
    text-encoder targets at TEXT's ranks (else 2); random downs and ups. Returns the file and each kohya
    module's (rank, alpha)."""
    comps, family = _base(tmp_path)
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, tuple[int, float]] = {}
    for prefix, module, to_path in kohya_parts(
        unet=comps.unet, text_encoders=comps.text_encoders, family=family
    ):
        for path, layer in module.named_modules():
            if prefix == "lora_unet":
                if path not in UNET:
                    continue
                rank, alpha = UNET[path]
            elif isinstance(layer, torch.nn.Linear) and path.endswith(TEXT_TARGETS):
                rank, alpha = TEXT.get((prefix, to_path(path)), (2, 1.0))
                if rank == 0:
                    continue
            else:
                continue
            name = f"{prefix}_{to_path(path).replace('.', '_')}"
            weight = layer.weight
            down = (rank, weight.shape[1], *weight.shape[2:])
            up = (weight.shape[0], rank, *([1, 1] if weight.dim() == 4 else []))
            state[f"{name}.lora_down.weight"] = torch.randn(down, generator=generator)
            state[f"{name}.lora_up.weight"] = torch.randn(up, generator=generator) * 0.01
            if alpha is not None:
                state[f"{name}.alpha"] = torch.tensor(alpha)
            ranks[name] = (rank, float(alpha if alpha is not None else rank))
    assert sum(n.startswith("lora_unet_input_blocks_") for n in ranks) == 5  # the original layout's names
    assert ranks["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] == (3, 1.5)
    assert "lora_te2_text_model_encoder_layers_1_self_attn_k_proj" not in ranks
    path = tmp_path / "sdxl-per-module.safetensors"
    save_file(state, str(path))
    return path, ranks


def _spec(tmp_path: Path, path: Path, steps: int) -> Path:
    text = (
        f'[adapter]\nkind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\n'
        f'init_weights = "{path}"\ninit_partial = true\ndenoiser_targets = ["to_q", "to_k", "to_v", '
        '"to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "time_emb_proj", "conv_shortcut"]\n'
        f"text_encoder_targets = {list(TEXT_TARGETS)!r}\n".replace("'", '"')
    )
    for block in sd_blocks(read_lora_file(path), original_names=True):
        text += f"\n[[adapter.blocks]]\npattern = '{block['pattern']}'\n"
        text += "".join(f"{key} = {block[key]}\n" for key in block if key != "pattern")
    for block in text_blocks(read_lora_file(path)):
        text += f"\n[[adapter.text_encoder_blocks]]\npattern = '{block['pattern']}'\n"
        text += f"rank = {block['rank']}\nalpha = {block['alpha']}\n"
    text += "\n[train]\ntext_encoder = true\n\n[checkpoints]\nevery = 2\n"
    return write_spec(tmp_path / "second", base="builtin:tiny-sdxl", steps=steps, extra=text)


def test_each_sdxl_module_starts_at_its_file_rank_and_no_other_has_a_lora(tmp_path):
    path, ranks = _file(tmp_path)
    plan = compile_spec(_spec(tmp_path, path, 2), ["optimizer.lr=1e-2"])
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    assert load_init_weights(plan, comps.unet, comps.text_encoders) == len(ranks)
    saved = load_file(str(path))
    found: dict[str, tuple[int, float]] = {}
    for prefix, module, to_path in kohya_parts(
        unet=comps.unet, text_encoders=comps.text_encoders, family=plan.model.family
    ):
        for name, layer in module.named_modules():
            if not hasattr(layer, "lora_A") or "default" not in layer.lora_A:
                continue
            key = f"{prefix}_{to_path(name).replace('.', '_')}"
            rank = layer.r["default"]
            found[key] = (rank, layer.scaling["default"] * rank)
            down = layer.lora_A["default"].weight.detach()
            assert torch.equal(down, saved[f"{key}.lora_down.weight"].float()), key
    assert found.keys() == ranks.keys()  # exactly the file's modules: kohya builds none elsewhere
    for key, (rank, alpha) in ranks.items():
        assert found[key][0] == rank and abs(found[key][1] - alpha) < 1e-6, key


def test_an_sdxl_per_module_run_resumes_bit_exact(tmp_path):
    path, _ = _file(tmp_path)
    spec = _spec(tmp_path, path, 4)
    assert_lora_resumes_bit_exact(spec)
