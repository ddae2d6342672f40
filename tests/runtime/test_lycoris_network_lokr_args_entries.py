"""A LoCon or LoHa network's `factor`, `decompose_both` and `unbalanced_factorization` beside its preset
file's LoKr entries (issue 12; was DBS403, a spec's DBS578): create_single_module hands the network's
arguments to every module and LokrModule alone reads them, so they are the LoKr entries' blocks' `factor` and
switches (lycoris_maps._network_lokr), the network's own layers untouched. Checked against lycoris-lora
4.1.3's create_network from the same file on tiny SD 1.x with module_dropout: every module's class and LoKr
split (its factors' shapes), our export loading into it, eval and training-mode outputs, the generator state
after each forward and every trained tensor's gradient. No tiny run: LoKr blocks with their own factor and
switches train and resume in test_lycoris_mixed_lokr's runs."""

from __future__ import annotations

import pytest

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet
from tests.runtime.test_lycoris_tlora_mixed_opts import FILE

pytest.importorskip("lycoris.kohya")

# id: (network algo, network_args besides module_dropout, the LoKr blocks' factor and switches)
CASES = {
    "locon_factor_decompose_both": (
        "locon",
        {"factor": "4", "decompose_both": "True"},
        (4, "on", "adapter"),
    ),
    "loha_unbalanced": ("loha", {"factor": "2", "unbalanced_factorization": "True"}, (2, "adapter", "on")),
}
HELD = {"locon": ("lora_up", "lokr_w2"), "loha": ("hada_w1_a", "lokr_w2")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_network_lokr_args_reach_its_lokr_entries_as_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, extra, (factor, both, unbalanced) = CASES[case]
    args = {"module_dropout": "0.3", **extra}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    path, plan = _converted_plan(tmp_path, "lokr_args", algo, given, text=FILE.format(algo="lokr", extra=""))
    a = plan.adapter
    blocks = [b for b in a.blocks if b.kind == "lokr"]
    assert blocks and {(b.factor, b.decompose_both, b.unbalanced_factorization) for b in blocks} == {
        (factor, both, unbalanced)
    }
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **args)
    assert "LokrModule" in {type(m).__name__ for m in made.unet_loras}
    result = made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), strict=False
    )
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys), result
    # (a LoKr split or switch other than LyCORIS's: another factor shape, which load_state_dict refuses)
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    grads_as_lycoris(ours, made, HELD[algo])


def test_flux_locon_network_lokr_args_reach_its_fused_lokr_entries_as_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears: a LoCon network's factor and decompose_both beside LoKr entries on the single
    blocks' linear1: each kohya module (one LokrModule per fused Linear, split as the network says) against
    the plan's parts (test_lycoris_flow_mixed_rs_lora_boft's _alike: outputs, generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike, _classes

    text = BOFT_FILE.replace('algo = "loha"', 'algo = "lokr"')
    args = {"module_dropout": "0.5", "factor": "4", "decompose_both": "True"}
    a, made, _ = _alike(tmp_path, monkeypatch, "locon", text, args)
    assert {(b.kind, b.factor, b.decompose_both) for b in a.blocks if b.kind == "lokr"} == {("lokr", 4, "on")}
    assert _classes(made)["lora_unet_single_blocks_0_linear1"] == "LokrModule"
