"""The network's `rank_dropout` on a LoCon / LoHa network on Flux whose preset file gives fused Linears
T-LoRA (issue 12; the SD case: test_lycoris_tlora_rank_dropout.py): lycoris-lora 4.1.3 hands every module the
rate, TLoraModule never reads it (one module per fused Linear, its forward's module_dropout draw alone) and
the LoCon / LoHa / full modules draw their one row mask over the fused update's stacked rows, which diffusers'
parts share (runtime/mixed_kinds.py). One tiny run (no resume: rank dropout adds no saved state; T-LoRA's
fused state resumes in test_lycoris_flow_tlora.py), then every kohya layer's module in lycoris-lora's network
from the same file (the run's export loaded, TLoraModule's frozen start its own SVD of kohya's stacked
weight) against the trained parts, in training from the same generator state: outputs in kohya's rows, the
generator left where the parts leave it, and the input's gradients."""

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
from tests.runtime.test_lycoris_mixed_flow_rank_dropout import DROP, RATE
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
from tests.runtime.test_lycoris_tlora import _no_gc

lycoris_kohya = pytest.importorskip("lycoris.kohya")


def _draws(forward, x: torch.Tensor) -> tuple[list, list, torch.Tensor]:
    """Six training forwards of `forward` from torch's generator at seed 11, each output's squared sum
    back-propagated: (outputs, input gradients, the generator state after)."""
    torch.manual_seed(11)
    outs, grads = [], []
    for _ in range(6):
        xi = x.clone().requires_grad_(True)
        out = forward(xi)
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append(xi.grad)
    return outs, grads, torch.get_rng_state()


@pytest.mark.parametrize(("algo", "qkv"), [("locon", "tlora"), ("tlora", "locon")])
def test_tlora_beside_rank_dropout_on_fused_layers_draws_as_lycoris(tmp_path, monkeypatch, algo, qkv):
    from tests.unit.convert_kit import flux_lycoris, plan_of

    _no_gc(monkeypatch)
    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE.replace("OTHER", "loha").replace("QKV", qkv).replace("LINEAR1", "full"))
    base = ["model.base=builtin:tiny-flux", *_BASE, "schedule.steps=4"]
    args = f'"algo={algo}" "preset={file.name}" "rank_dropout={RATE}" "module_dropout={DROP}"'
    plan = plan_of(flux_lycoris(tmp_path, args), tmp_path, base)
    a = plan.adapter
    kind = {"locon": "lora"}.get(algo, algo)
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (kind, RATE, "lycoris", DROP)
    _, whole, tensors = _run(tmp_path, {"tlora", "lora", "loha", "full", "ia3"} - {kind}, base, resume=False)
    unet = whole.components.unet
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(whole.components.text_encoders[0]))
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [clip, nn.Module()], _kohya_tree(layers), algo=algo, preset=str(file),
        rank_dropout=RATE, module_dropout=DROP,
    )  # fmt: skip
    made.apply_to([clip, nn.Module()], _kohya_tree(layers), apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result  # T-LoRA's
    theirs = {m.lora_name: m for m in made.unet_loras}
    classes = {type(m).__name__ for m in theirs.values()}
    assert {"TLoraModule", "LoConModule", "LohaModule", "FullModule"} <= classes
    unet.train()
    checked, masked = set(), 0
    for path, (parts, _) in layers.items():
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if module is None:
            continue
        module.train()
        x = torch.randn(3, _base(parts[0]).in_features)
        want, want_grads, after = _draws(module, x)
        order = _call_order(parts, unet)

        def ours(xi, parts=parts, order=order):
            got = {id(p): p(xi) for p in order}
            return torch.cat([got[id(p)] for p in parts], dim=-1)

        got, got_grads, state = _draws(ours, x)
        assert torch.equal(after, state), path  # the same draws in the same order
        for mine, expected in (*zip(got, want), *zip(got_grads, want_grads)):
            torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-5, msg=path)
        checked.add((type(module).__name__, len(parts) > 1))
        masked += len({tuple(o.flatten()[:4].tolist()) for o in got}) > 2  # the masks differ per forward
    unet.zero_grad(set_to_none=True)
    unet.eval()
    assert masked >= 3
    fused_qkv = {"tlora": "TLoraModule", "locon": "LoConModule"}[qkv]
    assert {(fused_qkv, True), ("LohaModule", True)} <= checked  # fused Linears
    assert {"TLoraModule", "LoConModule", "LohaModule", "FullModule"} <= {name for name, _ in checked}
