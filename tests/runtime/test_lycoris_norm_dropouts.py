"""LyCORIS `train_norm` beside algo=boft / glora / diag-oft / ia3 with the network's `module_dropout` and
`rank_dropout` on SD 1.x (issue 12; was DBS403): LyCORIS hands every NormModule the network's dropouts, and
each module draws from torch's global generator in its own forward, the NormModules' draws between the
ButterflyOFT / GLoRA / DiagOFT / IA3 modules' (DiagOFT's rotation mask, GLoRA's bypass_mode rank mask).
ButterflyOFTModule, IA3Module and GLoRAModule outside bypass_mode never read rank_dropout: the NormModules
alone draw it (IA3's adapter.rank_dropout, BOFT's and GLoRA's adapter.norm_rank_dropout). lycoris-lora
4.1.3's network (create_network over the file test's PRESET, every parameter moved at random, apply_to) and
dbspec's converted run started from its file give the same U-Net outputs over several training forwards from
the same generator state, leaving the generator in the same state; the run trains (IA^3's resumes bit for
bit)."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded

lycoris_kohya = pytest.importorskip("lycoris.kohya")

CASES = {
    # ButterflyOFTModule's skip draw; it never reads rank_dropout: the NormModules alone draw it
    # (adapter.norm_rank_dropout; was DBS403)
    "boft": (
        '"algo=boft" "conv_dim=4" "module_dropout=0.3" "rank_dropout=0.4"',
        {"module_dropout": "0.3", "rank_dropout": "0.4"},
    ),
    # DiagOFTModule's skip draw and its rotations' nn.Dropout mask; IA3Module's skip draw (it never reads
    # rank_dropout: the NormModules alone draw it)
    "diag-oft": (
        '"algo=diag-oft" "conv_dim=4" "module_dropout=0.3" "rank_dropout=0.4"',
        {"module_dropout": "0.3", "rank_dropout": "0.4"},
    ),
    "ia3": (
        '"algo=ia3" "conv_dim=4" "module_dropout=0.3" "rank_dropout=0.4"',
        {"module_dropout": "0.3", "rank_dropout": "0.4"},
    ),
    "glora": (
        '"algo=glora" "conv_dim=4" "module_dropout=0.3" "rank_dropout=0.4" "bypass_mode=True"',
        {"module_dropout": "0.3", "rank_dropout": "0.4", "bypass_mode": "True"},
    ),
    # outside bypass_mode GLoRAModule never reads rank_dropout: the NormModules alone (was DBS403); the
    # forwards only, the run's path is the bypass case's
    "glora-default": (
        '"algo=glora" "conv_dim=4" "module_dropout=0.3" "rank_dropout=0.4"',
        {"module_dropout": "0.3", "rank_dropout": "0.4"},
    ),
}
# the cases whose rank_dropout the NormModules alone draw (adapter.norm_rank_dropout)
NORMS_ALONE = ("boft", "glora-default")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder, monkeypatch, algo: str, extra: dict[str, str]):
    """kohya's steps over kit's PRESET: create_network (algo, conv_dim 4, train_norm, the dropouts), apply_to;
    the network and the U-Net it was applied to."""
    from tests.runtime.test_lycoris_sd_full_file import PRESET, _named

    kept_lycoris_presets(monkeypatch)
    preset = folder / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        named,
        unet,
        algo=algo,
        conv_dim="4",
        train_norm="True",
        preset=str(preset),
        **extra,
    )
    made.apply_to(named, unet, True, True)
    return made, unet


@pytest.mark.parametrize("case", sorted(CASES))
def test_norm_dropouts_draw_as_lycoris_beside(pipe, tmp_path, monkeypatch, case):
    args, extra = CASES[case]
    algo = case.split("-default")[0]
    made, theirs = _network(pipe, tmp_path, monkeypatch, algo, extra)
    kinds = {type(m).__name__ for m in made.unet_loras}
    assert "NormModule" in kinds and len(kinds) == 2, kinds
    path = kit.saved_file(made, tmp_path, seed=5, scale=0.1)
    made.load_weights(str(path))  # kohya's --network_weights (the same tensors)

    plan = kit.converted_plan(
        tmp_path,
        f'--network_dim=4 --network_alpha=1 --network_args "preset=preset.toml" "train_norm=True" {args}',
    )
    a = plan.adapter
    assert a.kind == algo and a.denoiser_norms and a.module_dropout == 0.3
    rate = float(extra.get("rank_dropout", 0))
    assert (a.rank_dropout, a.norm_rank_dropout) == ((0.0, rate) if case in NORMS_ALONE else (rate, rate))
    comps, _ = _loaded(plan)
    ours = comps.unet.float()
    made.train(), theirs.train(), ours.train()
    cfg = pipe.unet.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=generator)
    hidden = torch.randn(2, 5, cfg.cross_attention_dim, generator=generator)
    with torch.no_grad():
        theirs.eval(), made.eval()
        plain = theirs(x, 10, hidden).sample
        made.train(), theirs.train()
        differ = draws_as_lycoris(theirs, ours, x, hidden, plain)
    assert differ, "the dropouts changed no training forward"
    if case == "glora-default":
        return

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, kit.load_file(str(path)), lambda k: k.endswith(".w_norm")), (
        "the offsets trained"
    )
    if algo == "ia3":  # the norms' dropout draws beside IA^3's resume; the same generator beside the others'
        kit.resumes_bit_exact(tmp_path, whole, saved)


def draws_as_lycoris(theirs, ours, x, hidden, plain) -> int:
    """Four training forwards of lycoris-lora's U-Net and ours from the same seeds: equal outputs (1e-5) and
    generator state after each; how many differ from `plain` (the output without dropout)."""
    differ = 0
    for step in range(4):  # several training forwards, each drawing afresh
        torch.manual_seed(100 + step)
        want = theirs(x, 10, hidden).sample
        after = torch.get_rng_state()
        torch.manual_seed(100 + step)
        got = ours(x, 10, hidden).sample
        assert torch.equal(torch.get_rng_state(), after), f"forward {step}: the generator's state differs"
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"forward {step}")
        differ += int((want - plain).abs().max() > 1e-4)
    return differ
