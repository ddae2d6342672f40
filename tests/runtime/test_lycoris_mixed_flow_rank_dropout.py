"""A LyCORIS preset file giving kohya's Flux layers several algos with the network's `rank_dropout` (issue
12; was DBS403, a spec's DBS578 with `fused_projections`): lycoris-lora 4.1.3 hands every module the rate
and each class reads it as its own, a fused Linear (q/k/v, linear1) being ONE module: LoConModule's and
LohaModule's one `torch.rand(out)` row mask over the fused update's stacked rows, FullModule's over its
copy's rows, DiagOFTModule's dropout over its rotations, IA3Module, GLoRAModule (outside bypass) none;
diffusers' parts of a fused Linear share the one draw (runtime/mixed_kinds.py add_kinds_rank_dropout /
add_module_dropout). One tiny run per network (no resume: rank dropout adds no saved state; the kinds'
weights resume in test_lycoris_mixed_flow_full.py), then every kohya layer's module in lycoris-lora's
network from the same file (the run's export loaded) against the trained parts, in training from the same
generator state: outputs stacked in kohya's rows, the generator left where the parts leave it, and the
gradients of the input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow_dropout import _call_order
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    FLUX_FILE,
    _base,
    _kohya_layers,
    _kohya_tree,
    _run,
)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RATE = 0.25
DROP = 0.3  # module_dropout beside it: both kinds of forward compared


@pytest.mark.parametrize(
    ("algo", "other", "qkv", "linear1", "extra"),
    [
        ("locon", "loha", "diag-oft", "full", {}),  # a LoCon network: fused LoHa, Diag-OFT and full entries
        ("loha", "locon", "full", "glora", {}),  # a LoHa network: fused LoCon, full and GLoRA entries
        # networks whose own modules draw FullModule's mask or none (the converter's
        # lycoris_flow_whole.map_entries_rank_dropout, was DBS403)
        ("full", "loha", "diag-oft", "locon", {}),
        ("ia3", "locon", "loha", "full", {}),
        ("glora", "loha", "locon", "diag-oft", {}),
        ("dylora", "locon", "loha", "full", {"block_size": "2"}),
    ],
)
def test_rank_dropout_draws_once_per_lycoris_module_on_fused_layers(
    tmp_path, monkeypatch, algo, other, qkv, linear1, extra
):
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE.replace("OTHER", other).replace("QKV", qkv).replace("LINEAR1", linear1))
    base = ["model.base=builtin:tiny-flux", *_BASE, "schedule.steps=4"]
    args = f'"algo={algo}" "preset={file.name}" "rank_dropout={RATE}" "module_dropout={DROP}"'
    args += "".join(f' "{k}={v}"' for k, v in extra.items())
    plan = plan_of(flux_lycoris(tmp_path, args), tmp_path, base)
    assert plan.adapter.rank_dropout == RATE and plan.adapter.module_dropout == DROP and plan.adapter.fused
    locon = "lora" in {b.kind for b in plan.adapter.blocks} or algo in ("locon", "loha")
    assert plan.adapter.rank_dropout_form == ("lycoris" if locon else "kohya")  # LoConModule's row masks
    kinds = {{"locon": "lora"}.get(k, k) for k in ("full", "ia3", qkv, linear1, other)} - {algo}
    _, whole, tensors = _run(tmp_path, kinds, base, resume=False)
    unet = whole.components.unet
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(whole.components.text_encoders[0]))
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [clip, nn.Module()], _kohya_tree(layers), algo=algo, preset=str(file),
        rank_dropout=RATE, module_dropout=DROP, **extra,
    )  # fmt: skip
    made.apply_to([clip, nn.Module()], _kohya_tree(layers), apply_text_encoder=True, apply_unet=True)
    # a DyLoRA network's own layers export as LoRA (DyLoraModule's saved form): its modules are left out of
    # the comparison (DyLoraModule never reads rank_dropout; its block draw is Python's random)
    dylora = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    result = made.load_state_dict(
        {k: v for k, v in tensors.items() if k.split(".")[0] not in dylora}, strict=False
    )
    assert not result.unexpected_keys, result
    assert all(k.split(".")[0] in dylora for k in result.missing_keys), result
    assert bool(dylora) == (algo == "dylora")
    theirs = {m.lora_name: m for m in made.unet_loras if m.lora_name not in dylora}
    assert {type(theirs[n]).__name__ for n in theirs} >= {"FullModule", "IA3Module"}
    unet.train()
    fused = masked = 0
    for path, (parts, _) in layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        if name not in theirs:
            continue
        module = theirs[name].train()
        assert module.rank_dropout == RATE, name
        fused += len(parts) > 1
        x = torch.randn(3, _base(parts[0]).in_features)
        torch.manual_seed(11)
        want, want_grads = [], []
        for _ in range(6):
            xi = x.clone().requires_grad_(True)
            out = module(xi)
            out.pow(2).sum().backward()
            want.append(out.detach())
            want_grads.append(xi.grad)
        after = torch.get_rng_state()
        torch.manual_seed(11)
        ours, our_grads = [], []
        for _ in range(6):
            xi = x.clone().requires_grad_(True)
            got = {id(p): p(xi) for p in _call_order(parts, unet)}
            out = torch.cat([got[id(p)] for p in parts], dim=-1)
            out.pow(2).sum().backward()
            ours.append(out.detach())
            our_grads.append(xi.grad)
        assert torch.equal(after, torch.get_rng_state()), name  # the same draws in the same order
        for got, expected in zip(ours, want):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        for got, expected in zip(our_grads, want_grads):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        masked += len({tuple(o.flatten()[:4].tolist()) for o in ours}) > 2  # the masks differ per forward
    unet.zero_grad(set_to_none=True)
    unet.eval()
    assert fused == 3  # img qkv, txt qkv, linear1
    assert masked >= 3
