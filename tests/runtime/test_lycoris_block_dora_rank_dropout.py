"""The network's `rank_dropout` (and `module_dropout`) on a LoCon network whose preset file's entries set
their own weight decomposition (issue 12; was DBS403, a spec's DBS583): LyCORIS hands rank_dropout to every
LoConModule, decomposed or not, and each draws in its forward from torch's global generator: the skip
`torch.rand(1)`, then make_weight's row mask `torch.rand(out) > rank_dropout` over its update, which a
decomposed module renormalises with the base weight (per output row, or per input column with the entry's
wd_on_out = false). dbspec's decomposed layers mask in runtime/lycoris_dora.py, the others in
runtime/lora_dropout.py's lycoris form, each in its own forward. Checked against lycoris-lora 4.1.3's network
built from the same file on tiny SD 1.x holding the same weights: training-mode outputs, the generator state
after each forward, and the decomposed modules' gradients equal."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lora_dropout import add_lora_dropout
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, lycoris_unet

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RANK, MODULE = 0.3, 0.2
# LyCORIS's example preset: the ResNets' entry decomposed per input column, the transformers' MLP per output
# row, CLIP's MLP not; with dora_wd the ResNets' entry not decomposed, the others (the network's) are
OWN = PRESETS["classes"].replace("alpha = 1\n", "alpha = 1\nweight_decompose = true\nwd_on_out = false\n", 1)
OWN = OWN.replace("dim = 8\n", "dim = 8\nweight_decompose = true\n", 1)
NETWORK = PRESETS["classes"].replace("alpha = 1\n", "alpha = 1\nweight_decompose = false\n", 1)


def _ours(pipe, adapter):  # noqa: F811
    """The plan's U-Net layers, every trainable tensor moved at random (no update 0), with the run's rank
    and module dropout (runtime/prepare.py for a lora adapter)."""
    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in unet.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (p if p.abs().sum() else 0))
    a = adapter
    add_lora_dropout(
        unet, a.rank_dropout, a.module_dropout, a.multiplier, a.down_dropout, a.rank_dropout_form
    )
    return unet


@pytest.mark.parametrize("case", ["entries", "dora_wd"])
def test_rank_dropout_beside_entries_own_decomposition_is_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    PRESETS["own_wd"] = OWN if case == "entries" else NETWORK
    extra = {"dora_wd": "True"} if case == "dora_wd" else {}
    drops = {"rank_dropout": str(RANK), "module_dropout": str(MODULE), **extra}
    try:
        path, plan = _converted_plan(
            tmp_path, "own_wd", "locon", " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["own_wd"]
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (
        "lora",
        RANK,
        "lycoris",
        MODULE,
    )
    ours = _ours(pipe, a)
    decomposed_ours = {n for n, m in ours.named_modules() if dora_scale_of(m, "default") is not None}
    made, theirs = lycoris_unet(pipe, monkeypatch, "locon", path, **drops)
    wd = {m.lora_name: m for m in made.unet_loras if getattr(m, "wd", False)}
    assert wd and {"lora_unet_" + n.replace(".", "_") for n in decomposed_ours} == set(wd)
    assert len(wd) < len(made.unet_loras)  # some LoCon layers undecomposed beside them
    axes = {m.wd_on_out for m in wd.values()}
    assert axes == ({True, False} if case == "entries" else {True})
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    assert {(round(m.rank_dropout, 6), round(m.module_dropout, 6)) for m in made.unet_loras} == {
        (RANK, MODULE)
    }
    calm_then_dropped(ours, theirs, made, pipe.unet)
    for path in decomposed_ours:  # the magnitudes' and ups' gradients over the three masked forwards
        layer, module = ours.get_submodule(path), wd["lora_unet_" + path.replace(".", "_")]
        torch.testing.assert_close(
            dora_scale_of(layer, "default").grad, module.dora_scale.grad, rtol=1e-3, atol=1e-6, msg=path
        )
        torch.testing.assert_close(
            layer.lora_B["default"].weight.grad, module.lora_up.weight.grad, rtol=1e-3, atol=1e-6, msg=path
        )
