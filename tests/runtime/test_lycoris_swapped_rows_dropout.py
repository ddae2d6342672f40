"""LyCORIS's row masks and bypass Dropout on the Linears kohya's model holds with their halves of rows the
other way round (issue 12): diffusers' AdaLayerNormContinuous reads (scale, shift) where kohya's MMDiT / Flux
read (shift, scale) (SD3's last context modulation, SD3's and Flux's final modulation). lycoris-lora 4.1.3's
module on kohya's layer draws LoConModule.make_weight's / LohaModule.get_weight's `torch.rand(out)` row
mask, its bypass forward's Dropout of the update, GLoRAModule's Dropout of bx and DiagOFTModule's rank dropout
of its blocks in kohya's row order; dbspec drew them over diffusers' rows, each mask on the other half's rows
(runtime/kohya_rows.py now rolls each draw by half the rows, as lycoris_full.py / lycoris_tlora.py /
lycoris_boft.py did for their kinds). Layer by layer, no tiny run: the plan's denoiser as runtime/prepare.py
builds it (trainable tensors moved at random), its export loaded into lycoris-lora's create_network from the
same preset file on kohya's layers (weights stacked in kohya's rows), each swapped layer's module against
ours in training from one generator state: outputs in kohya's rows, input gradients, the generator after."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_lycoris_flow_rank_dropout_layers import (
    FLUX,
    SD3,
    _network,
    _plan,
    _prepared,
    _same_training,
)
from tests.runtime.test_lycoris_mixed_flow_full import _base, _kohya_layers, _kohya_tree

pytest.importorskip("lycoris.kohya")

SD3_LAST = "joint_blocks.1.context_block.adaLN_modulation.1"
PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["TARGETS", "final_layer.adaLN_modulation.1"]
text_encoder_target_module = []
ENTRIES
"""
# a LoCon network with a LoHa entry on the final modulation and a LoKr one on SD3's last context modulation
MIXED = """
[name_algo_map."final_layer.adaLN_modulation.1"]
algo = "loha"
dim = 2
[name_algo_map."LAST"]
algo = "lokr"
"""
ROWS, DROP, MODULE = "0.25", "0.3", "0.2"


@pytest.mark.parametrize(
    ("family", "algo", "args", "entries", "classes"),
    [
        # LoConModule.make_weight's row mask, module dropout first
        ("sd3", "locon", {"rank_dropout": ROWS, "module_dropout": MODULE}, "", {"LoConModule"}),
        # decomposed (dora_wd): the mask before the renormalisation
        ("sd3", "locon", {"rank_dropout": ROWS, "dora_wd": "True"}, "", {"LoConModule"}),
        ("sd3", "loha", {"rank_dropout": ROWS}, "", {"LohaModule"}),  # get_weight's CPU row mask
        # bypass_mode: LohaModule's row mask, then its Dropout of the update
        ("sd3", "loha", {"bypass_mode": "True", "dropout": DROP, "rank_dropout": ROWS}, "", {"LohaModule"}),
        # bypass Dropout beside other kinds: LoConModule's (its rank mask over the ranks), LohaModule's row
        # mask and Dropout, LokrModule's Dropout
        (
            "sd3", "locon", {"bypass_mode": "True", "dropout": DROP, "rank_dropout": ROWS}, MIXED,
            {"LohaModule", "LokrModule"},
        ),
        ("sd3", "glora", {"bypass_mode": "True", "dropout": DROP}, "", {"GLoRAModule"}),  # bx's Dropout
        ("sd3", "diag-oft", {"rank_dropout": ROWS}, "", {"DiagOFTModule"}),  # its blocks' Dropout
        # Flux's final modulation (final_layer.adaLN_modulation.1, diffusers' norm_out.linear) alike
        ("flux", "loha", {"bypass_mode": "True", "dropout": DROP, "rank_dropout": ROWS}, "", {"LohaModule"}),
    ],
)  # fmt: skip
def test_swapped_modulation_draws_in_kohyas_rows(tmp_path, monkeypatch, family, algo, args, entries, classes):
    from dbspec.runtime.sd3_kohya import swapped

    sd3 = family == "sd3"
    # SD3's fused q/k/v too: a LoCon network's export takes kohya's layout from its fused layers
    targets = f'{SD3_LAST}", "joint_blocks.*.attn.qkv' if sd3 else "double_blocks.*.img_mod.lin"
    preset = PRESET.replace("TARGETS", targets).replace("ENTRIES", entries.replace("LAST", SD3_LAST))
    plan = _plan(tmp_path, family, SD3 if sd3 else FLUX, preset, {"algo": algo, **args})
    a = plan.adapter
    assert (a.rank_dropout, a.output_dropout or a.bypass_dropout) == (
        float(args.get("rank_dropout", 0.0)) if algo != "glora" else 0.0,
        float(args.get("dropout", 0.0)),
    )
    transformer = build_pipeline(f"builtin:tiny-{family}").transformer.float()
    ours = _prepared(transformer, "unet", plan, a.denoiser_targets)
    tensors = lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32")
    rows = mmdit(2, ()) if sd3 else flux_model(1, 1)
    layers = _kohya_layers(ours, rows, sd3_parts if sd3 else diffusers_parts, swapped)
    made = _network(monkeypatch, algo, tmp_path / "p.toml", [nn.Module()] * 3, _kohya_tree(layers), args)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    theirs = {m.lora_name: m for m in made.unet_loras}
    ours.train()
    compared, moved = {}, 0
    for path, (parts, order) in layers.items():
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if module is None or order is None:  # the swapped Linears alone
            continue

        def stacked(x, part=parts[0], order=order):
            return part(x)[..., order]

        moved += _same_training(module.train(), stacked, torch.randn(3, _base(parts[0]).in_features), path)
        compared[path] = type(module).__name__
        if algo in ("locon", "loha") and "bypass_mode" not in args:  # the max norm's masked update too
            _same_max_norm(module, parts[0], ours, a, path)
    swapped_paths = (
        {SD3_LAST, "final_layer.adaLN_modulation.1"} if sd3 else {"final_layer.adaLN_modulation.1"}
    )
    assert compared.keys() == swapped_paths
    assert set(compared.values()) >= classes and moved == len(compared)  # every layer's draws move on


def _same_max_norm(module: nn.Module, layer: nn.Module, ours: nn.Module, adapter, path: str) -> None:
    """LyCORIS's apply_max_norm in training mode draws its module's row mask inside the norm (LoConModule's
    make_weight, LohaModule's get_weight): the norm of our layer's update (runtime/max_norm.py) equals it from
    the same generator state, over three draws, and leaves the generator alike."""
    from dbspec.runtime.max_norm import lycoris_norm_modules, lycoris_update

    mine = next(
        m for m in lycoris_norm_modules(ours, [], adapter.fused, adapter.rank_dropout) if m.layer is layer
    )
    results = []
    for norm in (lambda: module.apply_max_norm(1e9)[1], lambda: lycoris_update(mine).norm()):
        torch.manual_seed(5)
        with torch.no_grad():
            results.append(([float(norm()) for _ in range(3)], torch.get_rng_state()))
    (want, after), (got, state) = results
    assert torch.equal(after, state), path
    assert got == pytest.approx(want, rel=1e-5) and len(set(want)) > 1, path
