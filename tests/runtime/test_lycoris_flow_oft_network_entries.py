"""On Flux's fused Linears (issue 12; was DBS403 there, converted on SD 1.x/2.x / SDXL already): a Diag-OFT
network's LoCon / LoHa entries, converted as the entries' network with its own layers `diag-oft` blocks (as a
BOFT network's, test_lycoris_flow_mixed_rs_lora_boft.py; oft_entries.oft_network_host), and a LoCon network's
`rescaled` beside Diag-OFT / BOFT entries (their blocks' `rescaled = "on"`, an entry's own `rescaled = false`
its block's "off": create_single_module hands the root kwargs to every module whose entry does not give its
own, and only DiagOFTModule and ButterflyOFTModule read it; oft_entries.entries_rescaled). Each kohya layer's
lycoris-lora 4.1.3 module, built by create_network from the same network_args and file on kohya's stacked
original-layout Linears and loaded from our export (every trained tensor moved, the rescales too), against the
plan's diffusers parts: outputs, input gradients and generator state over six training forwards
(module_dropout draws), and every trained tensor's gradient; on SD3's joint blocks and Chroma's double /
single blocks alike (no tiny run)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike, _classes

pytest.importorskip("lycoris.kohya")

# a LoCon network: Diag-OFT on the double blocks' image q/k/v (the network's rescaled) and CLIP-L's
# attention, Diag-OFT with its own rescaled off on their text q/k/v, BOFT on their image out projections
# (dim 6: a block size FLUX.1's 3072-wide out projections split by), LoCon on the rest
RESCALED_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear1"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "diag-oft"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "diag-oft"
rescaled = false
[name_algo_map."double_blocks.*.img_attn.proj"]
algo = "boft"
dim = 6
[module_algo_map.CLIPAttention]
algo = "diag-oft"
"""


@pytest.mark.parametrize(
    "extra",
    [{}, {"rescaled": "True", "constraint": "0.0001"}],
    ids=["default", "rescaled_constraint"],
)
def test_flux_diag_oft_network_locon_loha_entries_is_lycoris(tmp_path, monkeypatch, extra):
    """A Diag-OFT network's LoCon / LoHa entries: converted as a LoCon network whose own layers (the double
    blocks' out projections) are `diag-oft` blocks (DiagOFTModule), with the network's module_dropout; with
    its rescaled and a binding constraint, those blocks' `rescaled` and alpha."""
    args = {"module_dropout": "0.5", **extra}
    a, made, _ = _alike(tmp_path, monkeypatch, "diag-oft", BOFT_FILE, args)
    assert a.kind == "lora"
    oft = [b for b in a.blocks if b.kind == "diag-oft"]
    assert oft and all(b.alpha == float(extra.get("constraint", 0.0)) for b in oft)
    assert all(b.rescaled == ("on" if extra else "adapter") for b in oft)
    classes = _classes(made)
    assert classes["lora_unet_double_blocks_0_img_attn_proj"] == "DiagOFTModule"
    assert classes["lora_unet_double_blocks_0_txt_attn_qkv"] == "LoConModule"
    assert classes["lora_unet_single_blocks_0_linear1"] == "LohaModule"
    assert made["lora_unet_double_blocks_0_img_attn_proj"].rescaled == bool(extra)


def test_flux_network_rescaled_beside_oft_entries_is_lycoris(tmp_path, monkeypatch):
    """A LoCon network's rescaled beside Diag-OFT / BOFT entries on the fused q/k/v, the out projections and
    CLIP-L: their blocks' `rescaled`, a Diag-OFT entry's own rescaled off."""
    args = {"rescaled": "True", "module_dropout": "0.5"}
    a, made, _ = _alike(tmp_path, monkeypatch, "locon", RESCALED_FILE, args)
    assert a.kind == "lora"
    kinds = {(b.kind, b.rescaled) for b in [*a.blocks, *a.text_encoder_blocks] if b.kind != "lora"}
    assert kinds == {("diag-oft", "on"), ("diag-oft", "off"), ("boft", "on")}
    classes = _classes(made)
    assert classes["lora_unet_double_blocks_0_img_attn_qkv"] == "DiagOFTModule"
    assert classes["lora_unet_double_blocks_0_img_attn_proj"] == "ButterflyOFTModule"
    assert classes["lora_unet_double_blocks_0_txt_attn_proj"] == "LoConModule"
    rescaled = {name for name, m in made.items() if getattr(m, "rescaled", False)}
    assert "lora_unet_double_blocks_0_img_attn_qkv" in rescaled
    assert "lora_unet_double_blocks_0_img_attn_proj" in rescaled
    assert "lora_unet_double_blocks_0_txt_attn_qkv" not in rescaled
    assert any(name.startswith("lora_te1_") for name in rescaled)  # CLIP-L's attention


# SD3: LoCon on the x blocks' q/k/v, the network's algorithm on the context blocks' q/k/v and the projections;
# Chroma: LoCon on the double blocks' image q/k/v, LoHa on the single blocks' linear1, the network's on the
# rest of the double blocks' attention
SD3_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj"]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "{algo}"
"""
CHROMA_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear1"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "{algo}"
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
"""


@pytest.mark.parametrize("family", ["sd3", "chroma"])
@pytest.mark.parametrize(
    ("algo", "entry", "args"),
    [
        ("diag-oft", "locon", {"module_dropout": "0.5"}),
        ("locon", "diag-oft", {"rescaled": "True", "module_dropout": "0.5"}),
    ],
    ids=["diag_oft_network", "network_rescaled"],
)
def test_sd3_and_chroma_oft_network_entries_and_rescaled_are_lycoris(
    tmp_path, monkeypatch, family, algo, entry, args
):
    """A Diag-OFT network's LoCon (and on Chroma LoHa) entries, and a LoCon network's rescaled beside a
    Diag-OFT entry, on SD3's joint blocks and Chroma's double / single blocks: as on Flux."""
    from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
    from dbspec.convert.kohya.lycoris_flow_file import mmdit, sd3_parts
    from dbspec.runtime.sd3_kohya import swapped
    from tests.runtime.shared import moved_components
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import (
        _CHROMA,
        _SD3,
        _grads_as_lycoris,
        modules_alike,
    )
    from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _kohya_layers, _kohya_tree, _lycoris_network
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    script, files, base = _SD3 if family == "sd3" else _CHROMA
    file = tmp_path / "mixed.toml"
    file.write_text((SD3_FILE if family == "sd3" else CHROMA_FILE).format(algo=entry), encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in files:
        component_file(tmp_path / f"{name}.safetensors")
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch {script} --train_data_dir=x --resolution=64 "
        "--network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo={algo}" "preset=mixed.toml" {given} '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    a = plan_of(outcome, tmp_path, [*base, *_BASE]).adapter
    assert a.kind == "lora"
    oft = [b for b in a.blocks if b.kind == "diag-oft"]
    assert oft and all(b.rescaled == ("on" if "rescaled" in args else "adapter") for b in oft)
    comps = moved_components(plan_of(outcome, tmp_path, [*base, *_BASE]))
    unet = comps.unet.train()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (the rescales from 1 too)
        for p in unet.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    tensors = lycoris_state(unet=unet, text_encoders=[], family=family, dtype="fp32")
    if family == "sd3":
        layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    else:
        layers = _kohya_layers(
            unet, chroma_model(1, 1, len(unet.distilled_guidance_layer.layers)), chroma_parts
        )
    made = _lycoris_network(monkeypatch, algo, file, [nn.Module()] * 3, _kohya_tree(layers), tensors, **args)
    classes = {type(m).__name__ for m in made.values()}
    assert {"DiagOFTModule", "LoConModule"} <= classes
    assert all(
        m.rescaled == ("rescaled" in args) for m in made.values() if type(m).__name__ == "DiagOFTModule"
    )
    modules_alike(made, layers, unet, [], least=1)
    assert _grads_as_lycoris(unet, [], made, family) >= len(made)
