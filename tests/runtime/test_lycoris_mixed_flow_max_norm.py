"""LyCORIS's max norm (`--scale_weight_norms`) on Flux in a run of several kinds (issue 12): the preset of
test_lycoris_mixed_flow.py (LoKr on the double blocks' image q/k/v, LoHa on the single blocks' linear1 and
img_in, LoCon or LoKr elsewhere; LoCon on the text q/k/v of a GLoRA / DyLoRA network) converted from a kohya
command line; the plan's model with random adapter weights exported, loaded by lycoris-lora 4.1.3's
create_network_from_weights onto kohya's fused Linears (the parts' base weights stacked): lycoris.kohya's
apply_max_norm_regularization over those modules and dbspec's over the same layers (a fused Linear one
module: its parts' rows, shared factors, one scalar) give the same count and norms and, after the step, the
same outputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules, lycoris_update
from tests.runtime.test_lycoris_mixed_flow import MIXED, MIXED_LOKR, _file, _tree
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")


TEXT_LOCON = '[name_algo_map."double_blocks.*.txt_attn.qkv"]\nalgo = "locon"\ndim = 4\nalpha = 2\n'


@pytest.mark.parametrize("algo", ["locon", "lokr", "glora", "dylora"])
def test_mixed_flux_max_norm_equals_lycoris_modules(tmp_path, algo):
    from tests.runtime.lycoris_flow_kit import stacked_linear
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models
    from tests.unit.convert_kit import flux_lycoris, plan_of

    base = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2"]
    base += ["model.t5_max_length=16"]
    # LoCon on the image q/k/v of a LoKr network, on the text q/k/v of a GLoRA / DyLoRA one
    preset = {"lokr": MIXED_LOKR, "locon": MIXED}.get(algo, MIXED + TEXT_LOCON)
    args = f'"algo={algo}" "preset={_file(tmp_path, preset)}"'
    plan = plan_of(flux_lycoris(tmp_path, args, "--scale_weight_norms 1.0"), tmp_path, base)
    a = plan.adapter
    assert a.fused and (a.max_norm, a.max_norm_form) == (1.0, "lycoris")
    assert {b.kind for b in a.blocks} >= {"lora", "lokr", "loha"} - {{"locon": "lora"}.get(algo, algo)}
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))  # the plan's adapters on the tiny Flux and CLIP-L
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for model in (comps.unet, comps.text_encoders[0]):
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    unet = comps.unet.eval()
    attn, single = unet.transformer_blocks[0].attn, unet.single_transformer_blocks[0]
    layers = {
        "double_blocks.0.img_attn.qkv": (attn.to_q, attn.to_k, attn.to_v),
        "double_blocks.0.txt_attn.qkv": (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
        "double_blocks.0.img_attn.proj": (attn.to_out[0],),
        "single_blocks.0.linear1": (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        "single_blocks.0.linear2": (single.proj_out,),
        "img_in": (unet.x_embedder,),
    }
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    kohya = _tree({path: stacked_linear(found) for path, found in layers.items()})
    clip = _kohya_clip(_unwrapped(comps.text_encoders[0]))
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, None, None, [clip, nn.Module()], kohya, tensors
    )
    network.apply_to([clip, nn.Module()], kohya, apply_text_encoder=False, apply_unet=True)
    theirs = {m.lora_name: m for m in network.unet_loras}
    names = ["lora_unet_" + path.replace(".", "_") for path in layers]
    assert set(names) <= set(theirs)
    assert {type(theirs[n]).__name__ for n in names} >= {"LoConModule", "LokrModule", "LohaModule"}
    # each fused Linear one module; the GLoRA / DyLoRA layers none (LyCORIS skips their modules; the file
    # holds a DyLoRA layer as a LoCon one, so its module is left out of theirs too)
    by_layer = {id(m.layer): m for m in lycoris_norm_modules(unet, [], a.fused)}
    scaled = [
        (n, by_layer[id(found[0])]) for n, found in zip(names, layers.values()) if id(found[0]) in by_layer
    ]
    assert len(scaled) == (6 if algo in ("locon", "lokr") else 4)
    names, ours = [n for n, _ in scaled], [m for _, m in scaled]
    with torch.no_grad():
        norms = sorted(float(lycoris_update(m).norm()) for m in ours)
    limit = norms[len(norms) // 2]
    unet.train()
    result = apply_max_norm(ours, limit)
    reference = lycoris_kohya.LycorisNetworkKohya.apply_max_norm_regularization(
        SimpleNamespace(unet_loras=[theirs[n] for n in names], text_encoder_loras=[]), limit, "cpu"
    )
    assert result[0] == int(reference[0]) and 0 < result[0] < len(ours)
    torch.testing.assert_close(
        torch.tensor(result[1:]),
        torch.tensor([float(reference[1]), float(reference[2])]),
        rtol=1e-6,
        atol=1e-7,
    )
    unet.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for path, found in layers.items():
            x = torch.randn(3, found[0].base_layer.in_features)
            trained = torch.cat([p(x) for p in found], dim=-1)
            theirs["lora_unet_" + path.replace(".", "_")].eval()
            torch.testing.assert_close(kohya.get_submodule(path)(x), trained, rtol=0, atol=1e-5, msg=path)
