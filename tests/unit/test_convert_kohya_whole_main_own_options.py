"""A full / IA^3 network's preset file entries of another algorithm with options of their own (issue 12; was
DBS403): a LoCon / LoHa / LoKr entry's own `use_tucker` is its block's `tucker` (spec ScaleBlock, the same
field as [[adapter.blocks]]' on other adapters), which DBS576 leaves to those kinds' denoiser blocks.
tests/runtime/test_lycoris_whole_main_tucker.py builds the same file with lycoris-lora 4.1.3."""

from __future__ import annotations

import pytest
from convert_kit import expressible, plan_of
from test_convert_kohya_whole_main_mixed import MIXED, _convert
from test_rules import DOG, STEPS, hits_of

from dbspec.compiler import rules

TUCKER = MIXED.replace("alpha = 2\n", "alpha = 2\nuse_tucker = true\n", 1)


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_an_entrys_own_use_tucker_is_its_blocks_tucker(tmp_path, algo):
    outcome = expressible(_convert(tmp_path, algo, preset=TUCKER))
    a = plan_of(outcome, tmp_path).adapter
    tucker = {(b.kind, b.rank, b.tucker) for b in a.blocks if b.kind != "adapter"}
    # the ResNets' LoCon entry (dim 4) in LoConModule's Tucker form; conv_in's LoRA and the MLPs' LoHa plain
    assert tucker == {("lora", 4, "on"), ("lora", 8, "adapter"), ("loha", 2, "adapter")}


@pytest.mark.parametrize("kind", ["full", "ia3"])
def test_block_tucker_fits_lora_loha_lokr_blocks_alone(kind):
    block = "[[adapter.blocks]]\npattern = 'resnets'\nkind = '{}'\nrank = 4\nalpha = 1.0\ntucker = 'on'\n"
    body = DOG + STEPS + f'[adapter]\nkind = "{kind}"\n'
    for other in ("lora", "loha", "lokr"):
        assert hits_of(rules.block_factor_lokr, body + block.format(other)) == []
    other = "ia3" if kind == "full" else "full"
    assert hits_of(rules.block_factor_lokr, body + block.format(other)) == [
        ("DBS576", "error", ("adapter", "blocks", 0, "tucker"))
    ]


def test_block_tucker_of_a_full_adapter_stays_on_the_unet_families():
    """On the U-Net families and SD3's patch convolution (was DBS578 there, issue 12); Flux has no k x k
    convolution."""
    block = "[[adapter.blocks]]\npattern = 'proj'\nkind = 'lora'\nrank = 4\nalpha = 1.0\ntucker = 'on'\n"
    body = DOG + STEPS + '[adapter]\nkind = "full"\nfused_projections = true\n' + block
    assert hits_of(rules.mixed_kinds_family, 'family = "flux"\n' + body) == [
        ("DBS578", "error", ("adapter", "blocks", 0, "tucker"))
    ]
    assert hits_of(rules.mixed_kinds_family, 'family = "sd3"\n' + body) == []
    assert (
        hits_of(
            rules.mixed_kinds_family, 'family = "sdxl"\n' + body.replace("fused_projections = true\n", "")
        )
        == []
    )


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_the_networks_use_tucker_reaches_the_entries_blocks(tmp_path, algo):
    """LyCORIS hands the network's use_tucker to every module: FullModule / IA3Module never read it, the
    LoCon / LoHa / LoKr entries' modules build their k x k convolutions' Tucker form (their blocks' `tucker`,
    an entry's own use_tucker = false keeping it off); the key is mapped, not DBS405."""
    preset = MIXED.replace('algo = "lora"\n', 'algo = "lora"\nuse_tucker = false\n', 1)
    outcome = expressible(_convert(tmp_path, algo, '"use_tucker=True"', preset))
    a = plan_of(outcome, tmp_path).adapter
    tucker = {(b.kind, b.rank, b.tucker) for b in a.blocks if b.kind != "adapter"}
    # the ResNets' LoCon (conv_rank 4) on; conv_in's own off (the adapter's: off); the MLPs' LoHa has no conv
    assert tucker == {("lora", 4, "on"), ("lora", 8, "adapter"), ("loha", 2, "adapter")}
    assert "DBS405" not in {d.code for d in outcome.diagnostics if "use_tucker" in d.message}
