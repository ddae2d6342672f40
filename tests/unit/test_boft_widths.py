"""LyCORIS BOFT's block split checked at plan time (dbspec/compiler/boft_widths.py, DBS390): a diffusers
folder's safetensors headers give each targeted layer's output width; those LyCORIS's power2factorization
cannot split are named before the run (the expectation: lycoris-lora's own power2factorization)."""

from __future__ import annotations

import types

import pytest
import torch
from safetensors.torch import save_file

from dbspec.compiler.boft_widths import check_boft_widths, unsplittable_layers
from dbspec.plan.boft import power2_factorization
from dbspec.plan.model import AdapterPlan

general = pytest.importorskip("lycoris.functional.general")


def test_power2_factorization_is_lycoris():
    for dimension in range(2, 400):
        for factor in (-1, 2, 4, 6, 8, 10, 16, 40):
            m, n = general.power2factorization(dimension, factor)
            assert power2_factorization(dimension, factor) == ((m, n) if n else (0, 0)), (dimension, factor)


class _Ctx:
    def __init__(self):
        self.reports = []

    def report(self, code, severity, message, path, help="", notes=()):
        self.reports.append((code, severity, message, path, help))


def _model(tmp_path, tensors: dict[str, tuple[int, ...]], component: str = "unet"):
    folder = tmp_path / component
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: torch.zeros(v) for k, v in tensors.items()}, str(folder / "diffusion_pytorch_model.safetensors")
    )
    return types.SimpleNamespace(source="diffusers", path=str(tmp_path), family="sd1", denoiser_file="")


UNET = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": (320, 320),  # 320 = 64 x 5
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight": (256, 320),
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight": (320, 1280),  # not targeted
    "down_blocks.0.resnets.0.conv1.weight": (40, 320, 3, 3),  # 40 = 8 x 5
    "down_blocks.0.resnets.0.conv1.bias": (40,),
}


def test_the_layers_power2factorization_cannot_split_are_named(tmp_path):
    model = _model(tmp_path, UNET)
    ctx = _Ctx()
    adapter = AdapterPlan(
        kind="boft", oft_block_size=4, denoiser_targets=("to_q", "to_k"), conv_targets=("conv1",)
    )
    check_boft_widths(ctx, model, adapter)
    ((code, severity, message, path, help_),) = ctx.reports
    assert (code, severity, path) == ("DBS390", "error", ("adapter", "block_size"))
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q (320 rows)" in message
    assert "unet.down_blocks.0.resnets.0.conv1 (40 rows)" in message and "to_k" not in message
    # the help's block size splits both, as LyCORIS's own factorization says
    block = int(help_.split("block_size to ")[1].split()[0])
    assert all(general.power2factorization(w, block)[1] for w in (320, 40, 256))
    assert not all(general.power2factorization(w, block - 2)[1] for w in (320, 40))


def test_a_block_size_that_splits_every_layer_passes(tmp_path):
    model = _model(tmp_path, UNET)
    ctx = _Ctx()
    adapter = AdapterPlan(
        kind="boft", oft_block_size=10, denoiser_targets=("to_q", "to_k"), conv_targets=("conv1",)
    )
    check_boft_widths(ctx, model, adapter)
    assert ctx.reports == []


def test_other_kinds_and_models_without_headers_are_left_to_the_runtime(tmp_path):
    ctx = _Ctx()
    check_boft_widths(
        ctx,
        _model(tmp_path, UNET),
        AdapterPlan(kind="diag-oft", oft_block_size=4, denoiser_targets=("to_q",)),
    )
    builtin = types.SimpleNamespace(source="builtin", path="", family="sd1", denoiser_file="")
    check_boft_widths(ctx, builtin, AdapterPlan(kind="boft", oft_block_size=4, denoiser_targets=("to_q",)))
    assert ctx.reports == []


def test_unsplittable_layers_follow_peft_suffix_matching():
    info = types.SimpleNamespace
    tensors = [("a.to_q.weight", info(shape=(48, 8))), ("a.xto_q.weight", info(shape=(48, 8)))]
    assert unsplittable_layers(tensors, ("to_q",), (), 4) == [("a.to_q", 48)]


def test_the_plan_refuses_a_base_model_layer_boft_cannot_split(tmp_path):
    """`dbspec plan` on a diffusers folder: its to_k is 320 rows wide (64 x 5), which block_size 4 cannot
    split (DBS390 names it); block_size 10 can."""
    from test_compile import codes, compile_in, image, write_spec
    from test_modelinfo import sd1_folder

    image(tmp_path / "inst" / "a.png", (64, 64))
    sd1_folder(tmp_path / "models" / "sd15")
    adapter = {"kind": "boft", "block_size": 4, "denoiser_targets": ["to_k"]}
    write_spec(tmp_path, model={"base": "models/sd15"}, adapter=adapter)
    planned = compile_in(tmp_path)
    assert planned.plan is None and "DBS390" in codes(planned, "error")
    (diagnostic,) = [d for d in planned.diagnostics if d.code == "DBS390"]
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k (320 rows)" in diagnostic.message
    write_spec(tmp_path, model={"base": "models/sd15"}, adapter={**adapter, "block_size": 10})
    assert "DBS390" not in codes(compile_in(tmp_path))


def test_a_block_of_its_own_splits_its_layers(tmp_path):
    """A block with its own block size (a LyCORIS preset map entry's dim) splits the layers it matches: to_q
    (320 rows) at the block's 10 passes, the conv at the adapter's 4 is still named (issue 12)."""
    from dbspec.plan.model import BlockPlan

    model = _model(tmp_path, UNET)
    ctx = _Ctx()
    adapter = AdapterPlan(
        kind="boft",
        oft_block_size=4,
        denoiser_targets=("to_q", "to_k"),
        conv_targets=("conv1",),
        blocks=(BlockPlan(pattern=r"to_q$", rank=10, alpha=0.0, conv_rank=10, conv_alpha=0.0),),
    )
    check_boft_widths(ctx, model, adapter)
    ((code, _, message, _, _),) = ctx.reports
    assert code == "DBS390" and "conv1 (40 rows)" in message and "to_q" not in message
    assert general.power2factorization(320, 10)[1] and not general.power2factorization(320, 4)[1]


def test_a_fused_layer_splits_by_its_stacked_width(tmp_path):
    """With fused_projections a fused Linear is one ButterflyOFTModule (runtime/lycoris_boft.py): its parts'
    widths add up (FLUX.1's 3072-row q, k, v and 12288-row MLP input: linear1's 21504 rows, which block
    size 32 cannot split though every part alone splits; 42 can)."""
    from dbspec.plan.model import FusedPlan

    rows = {"to_q": 3072, "to_k": 3072, "to_v": 3072, "proj_mlp": 12288}
    tensors = [
        (f"single_transformer_blocks.0.{p}.weight", types.SimpleNamespace(shape=(w, 3072)))
        for p, w in rows.items()
    ]
    parts = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    tensors = [(n.replace(".to_", ".attn.to_"), i) for n, i in tensors]
    fused = (FusedPlan(name="linear1", blocks="single_transformer_blocks", parts=parts),)
    targets = parts
    assert all(power2_factorization(w, 32)[1] for w in rows.values())
    assert unsplittable_layers(tensors, targets, (), 32) == []  # each part alone
    assert unsplittable_layers(tensors, targets, (), 32, fused=fused) == [
        ("single_transformer_blocks.0.linear1", 21504)
    ]
    assert unsplittable_layers(tensors, targets, (), 42, fused=fused) == []


def _boft_block(pattern: str, rank: int, kind: str = "boft"):
    from dbspec.plan.model import BlockPlan

    return BlockPlan(pattern=pattern, kind=kind, rank=rank, alpha=0.0, conv_rank=rank, conv_alpha=0.0)


def test_a_runs_boft_blocks_are_checked_beside_another_kind(tmp_path):
    """A LoRA adapter with a `kind = "boft"` block (a LyCORIS preset entry's algo=boft beside LoCon): the
    block's layers split by its own block size (its rank); the other kinds' layers are not BOFT's (to_k's
    and the conv's widths, which BOFT at 4 could not split, go unnamed) (issue 12)."""
    model = _model(tmp_path, UNET)
    ctx = _Ctx()
    adapter = AdapterPlan(
        kind="lora",
        rank=4,
        denoiser_targets=("to_q", "to_k"),
        conv_targets=("conv1",),
        blocks=(_boft_block(r"to_q$", 4), _boft_block(r"to_k$", 4, "loha")),
    )
    check_boft_widths(ctx, model, adapter)
    ((code, _, message, path, help_),) = ctx.reports
    assert code == "DBS390" and path == ("adapter", "blocks")
    assert "attn1.to_q (320 rows)" in message and "to_k" not in message and "conv1" not in message
    assert not general.power2factorization(320, 4)[1] and "to 10" in help_  # 320 = 2^5 x 10
    assert general.power2factorization(320, 10)[1]
    ctx = _Ctx()
    check_boft_widths(ctx, model, attrs_evolve(adapter, blocks=(_boft_block(r"to_q$", 10),)))
    assert ctx.reports == []


def attrs_evolve(adapter, **changes):
    import attrs

    return attrs.evolve(adapter, **changes)


def test_a_runs_boft_block_on_a_fused_layer_splits_its_stacked_width():
    """Flux / SD3 with fused_projections: a `boft` block over a fused Linear's parts is one
    ButterflyOFTModule over the stacked rows (linear1: 21504, which 32 cannot split though each part can;
    42 can); the parts of a fused layer under another kind's block are not checked (issue 12)."""
    from dbspec.plan.model import FusedPlan

    parts = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    rows = dict(zip(parts, (3072, 3072, 3072, 12288)))
    tensors = [
        (f"single_transformer_blocks.{i}.{p}.weight", types.SimpleNamespace(shape=(w, 3072)))
        for i in (0, 1)
        for p, w in rows.items()
    ]
    fused = (FusedPlan(name="linear1", blocks="single_transformer_blocks", parts=parts),)
    boft = _boft_block(r"^single_transformer_blocks\.0\.", 32)
    lokr = _boft_block(r"^single_transformer_blocks\.1\.", 32, "lokr")
    found = unsplittable_layers(tensors, parts, (), 4, (boft, lokr), fused=fused, mixed=True)
    assert found == [("single_transformer_blocks.0.linear1", 21504)]
    assert not power2_factorization(21504, 32)[1] and all(
        power2_factorization(w, 32)[1] for w in rows.values()
    )
    wide = _boft_block(r"^single_transformer_blocks\.0\.", 42)
    assert unsplittable_layers(tensors, parts, (), 4, (wide, lokr), fused=fused, mixed=True) == []


def test_the_plan_refuses_a_boft_block_width_beside_lora(tmp_path):
    """`dbspec plan` on a diffusers folder with a LoRA adapter whose `kind = "boft"` block at rank 4 covers
    to_k (320 rows: DBS390 names it); at 10 the plan passes (issue 12)."""
    from test_compile import codes, compile_in, image, write_spec
    from test_modelinfo import sd1_folder

    image(tmp_path / "inst" / "a.png", (64, 64))
    sd1_folder(tmp_path / "models" / "sd15")
    adapter = {"kind": "lora", "rank": 4, "denoiser_targets": ["to_k", "to_q"]}

    def spec(rank: int) -> None:
        path = write_spec(tmp_path, model={"base": "models/sd15"}, adapter=adapter)
        block = f'\n[[adapter.blocks]]\npattern = "to_k$"\nkind = "boft"\nrank = {rank}\nalpha = 0.0\n'
        path.write_text(path.read_text(encoding="utf-8") + block, encoding="utf-8")

    spec(4)
    planned = compile_in(tmp_path)
    assert planned.plan is None and "DBS390" in codes(planned, "error"), planned.diagnostics
    (diagnostic,) = [d for d in planned.diagnostics if d.code == "DBS390"]
    assert "attn2.to_k (320 rows)" in diagnostic.message and "to_q" not in diagnostic.message
    spec(10)
    planned = compile_in(tmp_path)
    assert "DBS390" not in codes(planned, "error") and planned.plan is not None, planned.diagnostics
