"""A Diag-OFT network's BOFT entries and a BOFT network's Diag-OFT entries (issue 12; were DBS403: no adapter
held both OFTs): a Diag-OFT adapter with blocks of kind boft (spec OftBlock `kind`), the BOFT network's own
layers its boft blocks. LyCORIS hands every module the network's constraint, rescaled, bypass_mode,
module_dropout and rank_dropout (DiagOFTModule's rotations' dropout in its default forward, which
ButterflyOFTModule never reads). lycoris-lora 4.1.3's network from the same file and network_args on tiny SD
1.x (module_dropout on) against the plan's U-Net as a run builds it: each module's class, eval and training
outputs, the generator state after each of three training forwards, and every trained tensor's gradient
(test_lycoris_network_dropouts_entries.alike); one tiny run resumes bit-exact."""

from __future__ import annotations

import pytest

from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_network_dropouts_entries import alike

pytest.importorskip("lycoris.kohya")

# id: (network algo, the FeedForward entry's, the GEGLU entry's, network_args)
CASES = {
    "diag_oft_boft_entries_rank_dropout": ("diag-oft", "boft", "boft", {"rank_dropout": "0.3"}),
    "diag_oft_boft_constraint_rescaled": (
        "diag-oft",
        "boft",
        "diag-oft",
        {"constraint": "0.0001", "rescaled": "True"},
    ),
    "diag_oft_boft_bypass": ("diag-oft", "boft", "boft", {"bypass_mode": "True", "rank_dropout": "0.3"}),
    "boft_network_diag_oft_entries": ("boft", "diag-oft", "diag-oft", {"rank_dropout": "0.3"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_diag_oft_and_boft_in_one_network_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, ff, geglu, args = CASES[case]
    a, made = alike(pipe, tmp_path, monkeypatch, algo, ff, geglu, args)
    assert a.kind == "diag-oft" and {b.kind for b in a.blocks} - {"adapter"} == {"boft"}
    classes = {type(m).__name__ for m in made.unet_loras}
    assert classes == {"DiagOFTModule", "ButterflyOFTModule"}
    # DiagOFTModule draws it in its default forward alone (in bypass_mode no module reads it: DBS405)
    assert a.rank_dropout == (0.0 if "bypass_mode" in args else float(args.get("rank_dropout", 0)))
    assert a.bypass == ("bypass_mode" in args) and all(
        bool(m.bypass_mode) == a.bypass for m in made.unet_loras
    )


def test_a_diag_oft_adapters_boft_blocks_train_and_resume(tmp_path):
    """A Diag-OFT network with BOFT entries and rank_dropout / module_dropout trains 2 steps; stopped after
    one and resumed, the losses and the saved files are bit-identical (both kinds' folders)."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute
    from tests.runtime.test_lycoris_algo_maps import _converted_plan
    from tests.runtime.test_lycoris_network_dropouts_entries import TEXT
    from tests.runtime.runspec import compile_spec
    from tests.unit.convert_kit import out_path

    args = '"rank_dropout=0.3" "module_dropout=0.3"'
    _converted_plan(tmp_path, "pair", "diag-oft", args, text=TEXT.format(ff="boft", geglu="boft"))
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "optimizer.lr=1e-2"]
    whole = execute(compile_spec(out_path(tmp_path), [*base, "output.dir=whole"]))
    split = compile_spec(out_path(tmp_path), [*base, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    files = sorted(str(p.relative_to(whole.final)) for p in Path(whole.final).rglob("*.safetensors"))
    assert any("boft" in name for name in files), files
    for name in files:
        x, y = load_file(str(Path(whole.final) / name)), load_file(str(Path(resumed.final) / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


# BOFT on the double blocks' out projections (3072 rows in blocks of 6), the network's Diag-OFT on their
# fused q/k/v (at the fused q/k/v's block size 18 the harness's gradient tolerance is exceeded by float32
# rounding alone, for a LoCon network's BOFT entries alike)
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*_attn.proj"]
algo = "boft"
dim = 6
"""


def test_flux_diag_oft_network_boft_entries_are_lycoris(tmp_path, monkeypatch):
    """On Flux: ButterflyOFTModules on the out projections beside one DiagOFTModule per fused q/k/v, with
    rank_dropout (DiagOFTModule's rotations' dropout alone) and module_dropout: each kohya module against the
    plan's parts (test_lycoris_flow_mixed_rs_lora_boft's _alike: outputs, generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import _alike

    args = {"rank_dropout": "0.3", "module_dropout": "0.3"}
    a, made, _ = _alike(tmp_path, monkeypatch, "diag-oft", FLUX_FILE, args)
    assert a.kind == "diag-oft" and [b.kind for b in a.blocks if b.kind != "adapter"] == ["boft"]
    assert {type(m).__name__ for m in made.values()} == {"DiagOFTModule", "ButterflyOFTModule"}
