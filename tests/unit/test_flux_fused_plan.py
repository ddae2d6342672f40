"""adapter.fused_projections in the compiler (no torch): the family registry's fused layers in the plan, and
DBS505 (no fused layers), DBS506 (some parts not adapted), DBS507 (parts at different ranks), DBS509 (a
DoRA the parts cannot share)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compile import codes, compile_in, image, planned_ok, write_spec

from dbspec.families import family_spec
from dbspec.plan.io import plan_from_json, plan_to_json
from dbspec.plan.summary import adapter_rows

FLUX = {"base": "builtin:tiny-flux"}
KOHYA = list(family_spec("flux").kohya_lora_targets)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def test_kohyas_targets_plan_every_fused_layer_and_the_plan_round_trips(toy: Path):
    adapter = {"kind": "lora", "rank": 8, "fused_projections": True, "denoiser_targets": KOHYA}
    write_spec(toy, model=FLUX, adapter=adapter)
    planned = compile_in(toy)
    plan = planned.plan
    assert plan is not None and not [c for c in codes(planned) if c.startswith("DBS50")]
    assert [(f.name, f.blocks, len(f.parts)) for f in plan.adapter.fused] == [
        ("img_attn_qkv", "transformer_blocks", 3),
        ("txt_attn_qkv", "transformer_blocks", 3),
        ("linear1", "single_transformer_blocks", 4),
    ]
    assert plan_from_json(plan_to_json(plan)).adapter.fused == plan.adapter.fused


def test_fused_projections_off_plans_none(toy: Path):
    write_spec(toy, model=FLUX, adapter={"kind": "lora", "denoiser_targets": KOHYA})
    assert planned_ok(toy).adapter.fused == ()


def test_default_targets_leave_proj_mlp_out_of_linear1(toy: Path):
    write_spec(toy, model=FLUX, adapter={"kind": "lora", "fused_projections": True})
    planned = compile_in(toy)
    assert planned.plan is not None and [c for c in codes(planned) if c.startswith("DBS50")] == ["DBS506"]
    message = next(d.message for d in planned.diagnostics if d.code == "DBS506")
    assert "linear1 without proj_mlp" in message
    assert len(planned.plan.adapter.fused) == 3  # linear1's q, k, v still share one down


def test_a_double_block_only_run_plans_the_double_blocks_fused_layers(toy: Path):
    adapter = {"kind": "lora", "fused_projections": True, "denoiser_targets": ["attn.to_q", "attn.to_k",
               "attn.to_v", "proj_mlp"]}  # fmt: skip
    blocks = '\n[[adapter.blocks]]\npattern = "^single_transformer_blocks\\\\."\nrank = 0\nalpha = 1\n'
    write_spec(toy, model=FLUX, adapter=adapter)
    with (toy / "spec.toml").open("a") as f:
        f.write(blocks)
    plan = planned_ok(toy)
    assert [f.name for f in plan.adapter.fused] == ["img_attn_qkv"]


def test_parts_at_different_ranks_are_refused(toy: Path):
    write_spec(
        toy, model=FLUX, adapter={"kind": "lora", "fused_projections": True, "denoiser_targets": KOHYA}
    )
    with (toy / "spec.toml").open("a") as f:
        f.write('\n[[adapter.blocks]]\npattern = "attn\\\\.to_k$"\nrank = 2\nalpha = 2\n')
    planned = compile_in(toy)
    assert "DBS507" in codes(planned, "error") and planned.plan is None  # an error leaves no plan to run
    message = next(d.message for d in planned.diagnostics if d.code == "DBS507")
    assert "attn.to_k rank 2" in message and "img_attn_qkv" in message


def test_a_block_scalar_over_some_parts_of_a_fused_layer_is_refused(toy: Path):
    """LyCORIS's LoCon on a fused Linear has one scalar, the parts' tied: a block's own scalar covering only
    some parts is DBS507; over the whole fused layer it plans (a LyCORIS map entry's use_scalar, issue 12)."""
    adapter = {"kind": "lora", "rank": 8, "alpha": 8, "fused_projections": True, "denoiser_targets": KOHYA}
    for pattern, refused in (
        ("attn\\\\.to_k$", True),
        ("^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$", False),
    ):
        write_spec(toy, model=FLUX, adapter=adapter)
        with (toy / "spec.toml").open("a") as f:
            f.write(f'\n[[adapter.blocks]]\npattern = "{pattern}"\nrank = 8\nalpha = 8\nscalar = "on"\n')
        planned = compile_in(toy)
        assert ("DBS507" in codes(planned, "error")) == refused, pattern
        if refused:
            message = next(d.message for d in planned.diagnostics if d.code == "DBS507")
            assert "to_k with" in message and "to_q without" in message and "scalar" in message
        else:
            assert planned.plan is not None and planned.plan.adapter.blocks[0].scalar == "on"


def test_a_block_dora_over_some_parts_of_a_fused_layer_is_refused(toy: Path):
    """LyCORIS's LoCon on a fused Linear decomposes the whole fused weight or none of it: a block's own dora
    covering only some parts is DBS507, peft's form DBS583; over the whole fused layer in LyCORIS's form it
    plans (a file with dora_scale in some modules, issue 12), per input column too (the parts sharing one
    (1, in) magnitude: tests/runtime/test_lycoris_flux_locon_columns.py; was DBS509)."""
    adapter = {
        "kind": "lora",
        "rank": 8,
        "alpha": 8,
        "fused_projections": True,
        "denoiser_targets": KOHYA,
        "dora_form": "lycoris",
    }
    whole = "^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$"
    for pattern, extra, refused in (
        ("attn\\\\.to_k$", {}, "DBS507"),
        (whole, {"dora_axis": "input"}, ""),
        (whole, {"dora_form": "peft"}, "DBS583"),
        (whole, {}, ""),
    ):
        write_spec(toy, model=FLUX, adapter={**adapter, **extra})
        with (toy / "spec.toml").open("a") as f:
            f.write(f'\n[[adapter.blocks]]\npattern = "{pattern}"\nrank = 8\nalpha = 8\ndora = "on"\n')
        planned = compile_in(toy)
        errors = [c for c in codes(planned, "error") if c in ("DBS507", "DBS509", "DBS583")]
        assert errors == ([refused] if refused else []), (pattern, extra)
        if refused == "DBS507":
            message = next(d.message for d in planned.diagnostics if d.code == "DBS507")
            assert "to_k with" in message and "to_q without" in message and "decomposition" in message
        if not refused:
            assert planned.plan is not None and planned.plan.adapter.blocks[0].dora == "on"
            assert (planned.plan.adapter.dora, planned.plan.adapter.dora_form) == (False, "lycoris")


def test_a_family_without_fused_layers_refuses_it(toy: Path):
    write_spec(toy, model={"base": "builtin:tiny-sd1"}, adapter={"kind": "lora", "fused_projections": True})
    assert "DBS505" in codes(compile_in(toy), "error")


def test_fused_dropout_plans_the_split_layers_that_draw_together(toy: Path):
    """adapter.fused_dropout (kohya's split_qkv dropouts): the fused layers with adapted parts, only where a
    dropout draws; DBS552 with shared downs or on a family without fused layers."""
    adapter = {"kind": "lora", "module_dropout": 0.1, "fused_dropout": True, "denoiser_targets": KOHYA}
    write_spec(toy, model=FLUX, adapter=adapter)
    plan = planned_ok(toy)
    assert [(f.name, f.parts) for f in plan.adapter.split_fused] == [
        (g.kohya_name, g.parts) for g in family_spec("flux").fused_projections
    ]
    assert plan.adapter.fused == () and plan_from_json(plan_to_json(plan)).adapter == plan.adapter
    write_spec(toy, model=FLUX, adapter={**adapter, "module_dropout": 0.0})
    assert planned_ok(toy).adapter.split_fused == ()  # nothing to draw
    write_spec(toy, model=FLUX, adapter={**adapter, "fused_projections": True})
    planned = compile_in(toy)
    assert "DBS552" in codes(planned, "error")
    assert "already" in next(d.message for d in planned.diagnostics if d.code == "DBS552")
    write_spec(toy, model={"base": "builtin:tiny-sd1"}, adapter={"kind": "lora", "fused_dropout": True})
    assert "DBS552" in codes(compile_in(toy), "error")


def test_the_parameter_count_of_kohyas_fused_flux_lora(toy: Path):
    """FLUX.1 dev's per-rank LoRA parameters with kohya's targets, counted from its architecture here: each
    Linear rank x (in + out), width 3072, MLP 12288; the shared downs once."""
    double_stream = 3 * (3072 + 3072) + (3072 + 3072) + 2 * (3072 + 12288) + (3072 + 6 * 3072)
    single = 3 * (3072 + 3072) + (3072 + 12288) + (15360 + 3072) + (3072 + 3 * 3072)
    every = 19 * 2 * double_stream + 38 * single + (3072 + 64)  # suffix proj_out: the final layer too
    shared = every - 19 * 2 * 2 * 3072 - 38 * 3 * 3072  # q/k/v (and proj_mlp) share one down per block
    adapter = {"kind": "lora", "rank": 1024, "denoiser_targets": KOHYA}  # counts of the tiny model: scaled
    write_spec(toy, model=FLUX, adapter=adapter)
    plain = planned_ok(toy).adapter.params["unet"]
    write_spec(toy, model=FLUX, adapter={**adapter, "fused_projections": True})
    fused = planned_ok(toy).adapter.params["unet"]
    write_spec(toy, model=FLUX, adapter={"kind": "lora", "rank": 1024})
    default = planned_ok(toy).adapter.params["unet"]
    # the plan scales the public model's count to the tiny model's size and truncates: within 2 parameters
    assert abs(plain / default - every / family_spec("flux").lora_params_per_rank["unet"]) < 2 / default
    assert abs(fused / plain - shared / every) < 2 / plain


def _kohya_file(path: Path, rows: int, alpha: float, *, rank: int = 4) -> None:
    """kohya's lora_flux layout: double block 0's fused img_attn.qkv (`rows` rows of lora_down) and its
    img_attn.proj (rank `rank`, alpha 2)."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {}
    for name, r, out, a in (("img_attn_qkv", rows, 3 * 32, alpha), ("img_attn_proj", rank, 32, 2.0)):
        key = f"lora_unet_double_blocks_0_{name}"
        tensors[f"{key}.lora_down.weight"] = np.zeros((r, 32), np.float32)
        tensors[f"{key}.lora_up.weight"] = np.zeros((out, r), np.float32)
        tensors[f"{key}.alpha"] = np.array(a, np.float32)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("rows", "alpha", "fused", "fits"),
    [
        (4, 2.0, True, ""),  # kohya's fused LoRA: one down of the adapter's rank
        (4, 2.0, False, ""),  # ... into per-part LoRAs: each part takes the down
        (12, 2.0, False, ""),  # split_qkv, kohya's writer: the parts' alpha
        (12, 6.0, False, ""),  # split_qkv, dbspec's writer: alpha / rows kept
        (12, 2.0, True, "stacks 3 separate downs"),
        (8, 2.0, True, "has 8 rows; adapter.rank 4 needs 4"),
        (4, 3.0, True, "is 3; adapter.alpha 2 needs 2"),
    ],
)
def test_a_kohya_flux_file_is_checked_against_the_fused_layers(toy: Path, rows, alpha, fused, fits):
    _kohya_file(toy / "prev.safetensors", rows, alpha)
    adapter = {"kind": "lora", "rank": 4, "alpha": 2, "fused_projections": fused, "denoiser_targets": KOHYA,
               "init_weights": "prev.safetensors"}  # fmt: skip
    write_spec(toy, model=FLUX, adapter=adapter)
    planned = compile_in(toy)
    found = [d for d in planned.diagnostics if d.code == "DBS356"]
    if not fits:
        assert planned.plan is not None and not found, [d.message for d in found]
        assert planned.plan.adapter.init_layers == 2
        return
    (d,) = found
    assert d.path == "adapter.init_weights" and "prev.safetensors" in d.message and fits in d.message
    assert "lora_unet_double_blocks_0_img_attn_qkv" in d.message


def test_a_kohya_flux_file_without_a_trained_part_names_the_block(toy: Path):
    _kohya_file(toy / "prev.safetensors", 4, 2.0)
    adapter = {"kind": "lora", "rank": 4, "alpha": 2, "fused_projections": True, "denoiser_targets": KOHYA,
               "init_weights": "prev.safetensors"}  # fmt: skip
    write_spec(toy, model=FLUX, adapter=adapter)
    with (toy / "spec.toml").open("a") as f:
        f.write('\n[[adapter.blocks]]\npattern = "^transformer_blocks\\\\.0\\\\."\nrank = 0\nalpha = 1\n')
    (d,) = [d for d in compile_in(toy).diagnostics if d.code == "DBS356"]
    assert "fused img_attn_qkv of block 0" in d.message


def test_parts_at_different_learning_rates_are_refused(toy: Path):
    write_spec(toy, model=FLUX, adapter={"kind": "lora", "rank": 4, "alpha": 4, "fused_projections": True,
                                         "denoiser_targets": KOHYA})  # fmt: skip
    with (toy / "spec.toml").open("a") as f:
        f.write('\n[[adapter.blocks]]\npattern = "proj_mlp$"\nrank = 4\nalpha = 4\nlr_scale = 0.5\n')
    planned = compile_in(toy)
    message = next(d.message for d in planned.diagnostics if d.code == "DBS507")
    assert "proj_mlp rank 4 alpha 4 lr x 0.5" in message and "linear1" in message


# LoKr on fused layers (LokrAdapter.fused_projections: lycoris.kohya algo=lokr on kohya's Flux): DBS575
_LOKR_TARGETS = [t for t in KOHYA if t != "proj_out"] + ["single_transformer_blocks.0.proj_out"]


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_lokr_and_loha_on_every_part_plan_the_fused_layers(toy: Path, kind):
    adapter = {"kind": kind, "rank": 2, "fused_projections": True, "denoiser_targets": _LOKR_TARGETS}
    write_spec(toy, model=FLUX, adapter=adapter)
    plan = planned_ok(toy)
    assert [f.name for f in plan.adapter.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        ("^single_transformer_blocks\\\\.0\\\\.(attn\\\\.to_[qkv]|proj_mlp)$", False),  # all of linear1
        ("^single_transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$", True),  # not proj_mlp: DBS507
    ],
)
def test_a_lokr_block_covers_whole_fused_layers(toy: Path, pattern, refused):
    """A LyCORIS map entry's own dim / alpha / factor on fused LoKr: one block per fused layer, even where
    the values would agree (the rank of the block that misses proj_mlp equals the adapter's)."""
    adapter = {"kind": "lokr", "rank": 2, "fused_projections": True, "denoiser_targets": _LOKR_TARGETS}
    write_spec(toy, model=FLUX, adapter=adapter)
    with (toy / "spec.toml").open("a") as f:
        f.write(f'\n[[adapter.blocks]]\npattern = "{pattern}"\nrank = 2\nalpha = 2\nfactor = 4\n')
    planned = compile_in(toy)
    if not refused:
        assert planned.plan is not None and not codes(planned, "error")
        assert planned.plan.adapter.blocks[0].factor == 4
        return
    assert codes(planned, "error") == ["DBS507"]
    message = next(d.message for d in planned.diagnostics if d.code == "DBS507")
    assert "single_transformer_blocks.0's fused linear1" in message and "proj_mlp: none" in message


def test_lokr_with_a_part_left_out_is_refused(toy: Path):
    targets = [t for t in _LOKR_TARGETS if t != "proj_mlp"]
    write_spec(
        toy, model=FLUX, adapter={"kind": "lokr", "fused_projections": True, "denoiser_targets": targets}
    )
    planned = compile_in(toy)
    assert "DBS575" in codes(planned, "error")
    assert "linear1 without proj_mlp" in next(d.message for d in planned.diagnostics if d.code == "DBS575")


def test_lokr_dora_per_input_column_plans_with_the_dropouts(toy: Path):
    """The weight decomposition per input column on a fused LoKr (the parts sharing one magnitude and the
    whole fused weight's column norms, runtime/lycoris_dora.py; was DBS575); with module_dropout and
    rank_dropout too (was DBS575: the fused module's one draw, tests/runtime/
    test_lycoris_flux_columns_dropout.py); output_dropout (LyCORIS's bypass dropout) DBS575 with dora."""
    adapter = {"kind": "lokr", "fused_projections": True, "denoiser_targets": _LOKR_TARGETS}
    write_spec(toy, model=FLUX, adapter={**adapter, "dora": True, "dora_axis": "input"})
    planned = compile_in(toy)
    assert planned.plan is not None and not codes(planned, "error")
    assert (planned.plan.adapter.dora, planned.plan.adapter.dora_axis) == (True, "input")
    drops = {"module_dropout": 0.1, "rank_dropout": 0.2}
    write_spec(toy, model=FLUX, adapter={**adapter, "dora": True, "dora_axis": "input", **drops})
    planned = compile_in(toy)
    assert planned.plan is not None and not codes(planned, "error")
    assert (planned.plan.adapter.module_dropout, planned.plan.adapter.rank_dropout) == (0.1, 0.2)
    write_spec(
        toy, model=FLUX, adapter={**adapter, "dora": True, "dora_axis": "input", "output_dropout": 0.1}
    )
    assert "DBS575" in codes(compile_in(toy), "error")


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_a_fused_lokr_or_loha_block_with_its_own_dora(toy: Path, kind):
    """A block's own LyCORIS weight decomposition on fused LoKr / LoHa (a map entry's weight_decompose, a
    --dim_from_weights file's dora_scale in some modules): planned over whole fused layers (was DBS583), per
    input column too (the parts sharing one (1, in) magnitude; was DBS575); a block splitting a fused layer
    DBS507 (issue 12)."""
    adapter = {"kind": kind, "rank": 2, "fused_projections": True, "denoiser_targets": _LOKR_TARGETS}
    whole = r"^transformer_blocks\\.0\\.attn\\.(to_q|to_k|to_v)$"
    block = '\n[[adapter.blocks]]\npattern = "{}"\nrank = 2\nalpha = 2\ndora = "on"\n'
    for extra in ({}, {"dora_axis": "input"}):
        write_spec(toy, model=FLUX, adapter={**adapter, **extra})
        with (toy / "spec.toml").open("a") as f:
            f.write(block.format(whole))
        planned = compile_in(toy)
        assert planned.plan is not None and not codes(planned, "error")
        assert [b.dora for b in planned.plan.adapter.blocks] == ["on"]
        assert planned.plan.adapter.dora_axis == extra.get("dora_axis", "output")
    write_spec(toy, model=FLUX, adapter=adapter)
    with (toy / "spec.toml").open("a") as f:
        f.write(block.format(r"^transformer_blocks\\.0\\.attn\\.to_q$"))
    assert "DBS507" in codes(compile_in(toy), "error")


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_lokr_and_loha_output_dropout_is_lycoris_bypass_dropout_on_fused_layers(toy: Path, kind):
    """output_dropout (LyCORIS's bypass dropout), with or without fused layers, never with dora (LyCORIS's
    bypass forward does not decompose): DBS575."""
    adapter = {"kind": kind, "fused_projections": True, "denoiser_targets": _LOKR_TARGETS}
    for fused in (True, False):
        spec = {**adapter, "fused_projections": fused, "output_dropout": 0.2, "module_dropout": 0.1}
        write_spec(toy, model=FLUX, adapter=spec)
        assert planned_ok(toy).adapter.output_dropout == 0.2
    write_spec(toy, model=FLUX, adapter={**adapter, "output_dropout": 0.2, "dora": True})
    planned = compile_in(toy)
    message = next(d.message for d in planned.diagnostics if d.code == "DBS575")
    assert "adapter.output_dropout" in message and "dora" in message


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_lokr_and_loha_on_fused_layers_take_lycoris_switches_and_dropouts(toy: Path, kind):
    """dora_wd per output row, use_scalar, LyCORIS's max norm and the dropouts act on the fused layer as a
    whole."""
    options = {"dora": True, "scalar": True, "max_norm": 1.0, "module_dropout": 0.1}
    if kind == "loha":  # one draw per fused layer, its masked update decomposed
        options["rank_dropout"] = 0.1
    adapter = {"kind": kind, "fused_projections": True, "denoiser_targets": _LOKR_TARGETS, **options}
    write_spec(toy, model=FLUX, adapter=adapter)
    plan = planned_ok(toy)
    assert plan.adapter.dora and plan.adapter.scalar and plan.adapter.module_dropout == 0.1


def test_lokr_on_sd3_fused_layers_plans_with_a_kohya_export(toy: Path):
    """SD3's fused q/k/v take LyCORIS's LoKr as Flux's do (kohya's SD3 names: runtime/lycoris_export.py)."""
    targets = list(family_spec("sd3").kohya_lora_targets)
    adapter = {"kind": "lokr", "fused_projections": True, "denoiser_targets": targets}
    write_spec(toy, model={"base": "builtin:tiny-sd3"}, adapter=adapter)
    with (toy / "spec.toml").open("a") as f:
        f.write('\n[checkpoints]\nexports = ["kohya_lora"]\n')
    planned = compile_in(toy)
    assert planned.plan is not None and not codes(planned, "error")
    assert [f.name for f in planned.plan.adapter.fused] == [
        "x_block_attn_qkv",
        "context_block_attn_qkv",
        "x_block_attn2_qkv",
    ]


def test_lokr_under_fsdp_is_refused(toy: Path):
    adapter = {"kind": "lokr", "fused_projections": True, "denoiser_targets": _LOKR_TARGETS}
    write_spec(toy, model=FLUX, adapter=adapter)
    with (toy / "spec.toml").open("a") as f:
        f.write('\n[distributed]\nstrategy = "fsdp"\n')
    assert "DBS575" in codes(compile_in(toy), "error")


# LoRA DoRA on fused layers (lycoris.kohya dora_wd on kohya's Flux: per output row of a fused Linear, or per
# input column with one (1, in) magnitude the parts share; the dropouts: DBS267): DBS509
@pytest.mark.parametrize(
    ("dora", "fits"),
    [
        ({"dora_form": "lycoris"}, True),
        ({"dora_form": "lycoris", "dora_axis": "input"}, True),  # tie_fused_doras: one column norm
        ({}, False),  # peft's DoRA
    ],
)
def test_dora_on_fused_layers_is_lycoris_per_output_row(toy: Path, dora, fits):
    adapter = {"kind": "lora", "fused_projections": True, "denoiser_targets": KOHYA, "dora": True, **dora}
    write_spec(toy, model=FLUX, adapter=adapter)
    planned = compile_in(toy)
    assert ("DBS509" in codes(planned, "error")) is not fits, codes(planned, "error")
    if fits:
        assert planned.plan.adapter.dora and len(planned.plan.adapter.fused) == 3


def test_dora_on_fused_layers_with_a_part_left_out_is_refused(toy: Path):
    adapter = {"kind": "lora", "fused_projections": True, "dora": True, "dora_form": "lycoris"}
    write_spec(toy, model=FLUX, adapter=adapter)  # the default targets leave proj_mlp out of linear1
    planned = compile_in(toy)
    assert "linear1 without proj_mlp" in next(d.message for d in planned.diagnostics if d.code == "DBS509")


def test_lokr_starts_from_a_file_on_the_fused_layers_only(toy: Path):
    """A LoKr / LoHa init_weights is lycoris.kohya's file on kohya's fused Flux layers (DBS356 otherwise)."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file(
        {"lora_unet_double_blocks_0_img_attn_qkv.lokr_w1": np.zeros((2, 2), np.float16)}, str(toy / "a.st")
    )
    adapter = {
        "kind": "lokr",
        "denoiser_targets": _LOKR_TARGETS,
        "init_weights": "a.st",
        "init_partial": True,
    }
    write_spec(toy, model=FLUX, adapter=adapter)
    assert "DBS356" in codes(compile_in(toy), "error")
    write_spec(toy, model=FLUX, adapter={**adapter, "fused_projections": True})
    planned = compile_in(toy)
    assert planned.plan is not None and planned.plan.adapter.init_layers == 1


@pytest.mark.parametrize(
    ("adapter", "tensors"),
    [
        ({"kind": "diag-oft", "block_size": 4}, {"oft_blocks": (2, 4, 4)}),
        ({"kind": "glora", "rank": 4, "alpha": 2.0, "scalar": True}, {"a1.weight": (8, 4)}),
        ({"kind": "lokr", "scalar": True}, {"lokr_w1": (2, 2)}),
        ({"kind": "boft", "block_size": 4}, {"oft_blocks": (1, 2, 4, 4)}),
    ],
)
def test_whole_layer_and_scalar_files_start_the_fused_layers(toy: Path, adapter, tensors):
    """lycoris.kohya --network_weights on kohya's Flux: a Diag-OFT or GLoRA file (one module per fused
    Linear, cut into the parts when the run loads it) and a use_scalar one (every scalar 1 after loading)
    plan; a BOFT one stays DBS356 (its butterfly stages span the parts' rows)."""
    import numpy as np
    from safetensors.numpy import save_file

    name = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{name}.{k}": np.zeros(v, np.float16) for k, v in tensors.items()}, str(toy / "a.st"))
    targets = _LOKR_TARGETS if adapter["kind"] == "lokr" else KOHYA
    fused = {} if adapter["kind"] == "boft" else {"fused_projections": True}  # BOFT has no fused form
    spec = {**adapter, **fused, "denoiser_targets": targets, "init_weights": "a.st"}
    write_spec(toy, model=FLUX, adapter={**spec, "init_partial": True})
    planned = compile_in(toy)
    if adapter["kind"] == "boft":
        assert "DBS356" in codes(planned, "error")
        return
    assert planned.plan is not None, planned.diagnostics
    assert planned.plan.adapter.init_layers == 1


# Diag-OFT on fused layers (DiagOftAdapter.fused_projections: lycoris.kohya algo=diag-oft on kohya's Flux)
def test_diag_oft_plans_the_fused_layers(toy: Path):
    adapter = {"kind": "diag-oft", "block_size": 4, "fused_projections": True, "denoiser_targets": KOHYA}
    write_spec(toy, model=FLUX, adapter=adapter)
    planned = compile_in(toy)
    assert planned.plan is not None and [f.name for f in planned.plan.adapter.fused] == [
        "img_attn_qkv",
        "txt_attn_qkv",
        "linear1",
    ]


def test_diag_oft_max_norm_plans_lycoris_form_on_fused_layers(toy: Path):
    """LyCORIS's max norm on a fused Diag-OFT (was DBS577): one DiagOFTModule per fused Linear, its norm over
    every part's blocks (runtime/max_norm.py), planned in LyCORIS's form, with a constraint and bypass too."""
    adapter = {"kind": "diag-oft", "block_size": 4, "fused_projections": True, "denoiser_targets": KOHYA}
    for extra in ({}, {"constraint": 1e-3, "bypass": True, "rescaled": True}):
        write_spec(toy, model=FLUX, adapter={**adapter, **extra, "max_norm": 0.5})
        plan = planned_ok(toy)
        assert (plan.adapter.max_norm, plan.adapter.max_norm_form, len(plan.adapter.fused)) == (
            0.5,
            "lycoris",
            3,
        )
        assert "fused layer's parts one layer" in dict(adapter_rows(plan.adapter))["  max norm"]
    write_spec(toy, model=FLUX, adapter={**adapter, "max_norm": 0.5, "form": "kohya", "block_count": 4})
    planned = compile_in(toy)  # kohya's OFT has no max-norm regularisation (DBS574)
    assert "max_norm" in next(d.message for d in planned.diagnostics if d.code == "DBS574")


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"form": "kohya", "block_count": 4}, 'form = "kohya"'),
        ({"denoiser_targets": [t for t in KOHYA if t != "proj_mlp"]}, "linear1 without proj_mlp"),
    ],
)
def test_diag_oft_what_spans_the_parts_is_dbs577(toy: Path, extra, why):
    adapter = {"kind": "diag-oft", "fused_projections": True, "denoiser_targets": KOHYA, **extra}
    write_spec(toy, model=FLUX, adapter=adapter)
    planned = compile_in(toy)
    assert "DBS577" in codes(planned, "error")
    assert why in next(d.message for d in planned.diagnostics if d.code == "DBS577")


def test_diag_oft_fused_blocks_over_whole_fused_layers_plan(toy: Path):
    """A block's own block size, constraint or rescale (a --dim_from_weights file's modules at their own,
    issue 12): planned over every part of a fused layer; over some parts DBS577."""
    adapter = {"kind": "diag-oft", "block_size": 4, "fused_projections": True, "denoiser_targets": KOHYA}
    whole = "^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$"
    for block, refused in (
        (f'pattern = "{whole}"\nblock_size = 8\nrescaled = "on"', ""),
        ('pattern = "attn\\\\.to_k$"\nblock_size = 8', "block sizes, constraints or rescales"),
        (
            'pattern = "attn\\\\.to_k$"\nblock_size = 4\nrescaled = "on"',
            "block sizes, constraints or rescales",
        ),
        (f'pattern = "{whole}"\nblock_size = 8\nconstraint = 0.001', ""),
        (
            'pattern = "attn\\\\.to_k$"\nblock_size = 4\nconstraint = 0.001',
            "block sizes, constraints or rescales",
        ),
    ):
        write_spec(toy, model=FLUX, adapter=adapter)
        with (toy / "spec.toml").open("a") as f:
            f.write(f"\n[[adapter.blocks]]\n{block}\n")
        planned = compile_in(toy)
        assert ("DBS577" in codes(planned, "error")) == bool(refused), block
        if refused:
            assert refused in next(d.message for d in planned.diagnostics if d.code == "DBS577")
        else:
            (planned_block,) = planned.plan.adapter.blocks
            assert planned_block.rank == 8


def test_diag_oft_fused_projections_on_sd1_is_dbs505(toy: Path):
    write_spec(toy, adapter={"kind": "diag-oft", "fused_projections": True})
    assert "DBS505" in codes(compile_in(toy), "error")


def test_dylora_fused_parts_in_blocks_of_other_units_are_dbs577(toy: Path):
    """LyCORIS's DyLoRA on a fused Linear has one block size: a block's own unit covering only some parts of
    a fused layer is DBS577; over every part it plans (a LyCORIS map entry's block_size, issue 12)."""
    adapter = {"kind": "dylora", "rank": 4, "unit": 2, "fused_projections": True, "denoiser_targets": KOHYA}
    for pattern, refused in (
        ("attn\\\\.to_k$", True),
        ("^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$", False),
    ):
        write_spec(toy, model=FLUX, adapter=adapter)
        with (toy / "spec.toml").open("a") as f:
            f.write(f'\n[[adapter.blocks]]\npattern = "{pattern}"\nrank = 4\nalpha = 4\nunit = 1\n')
        planned = compile_in(toy)
        assert ("DBS577" in codes(planned, "error")) == refused, pattern
        if refused:
            assert "blocks of other units" in next(
                d.message for d in planned.diagnostics if d.code == "DBS577"
            )
        else:
            assert planned.plan is not None and planned.plan.adapter.blocks[0].unit == 1


def test_dylora_fused_module_dropout_plans(toy: Path):
    """DyLoRA's module_dropout on fused layers: one skip draw per fused Linear, its parts sharing it
    (runtime/fused.py FusedSkip; was DBS577, issue 12); GLoRA's dropouts too (runtime/lycoris_glora.py
    FusedDraws)."""
    adapter = {"kind": "dylora", "rank": 4, "unit": 2, "fused_projections": True, "denoiser_targets": KOHYA}
    write_spec(toy, model=FLUX, adapter={**adapter, "module_dropout": 0.3})
    planned = compile_in(toy)
    assert planned.plan is not None, planned.diagnostics
    assert planned.plan.adapter.module_dropout == 0.3 and len(planned.plan.adapter.fused) == 3
    glora = {"kind": "glora", "rank": 4, "fused_projections": True, "denoiser_targets": KOHYA}
    dropped = {"module_dropout": 0.3, "bypass": True, "rank_dropout": 0.2, "dropout": 0.1}
    write_spec(toy, model=FLUX, adapter={**glora, **dropped})
    planned = compile_in(toy)
    assert planned.plan is not None, planned.diagnostics
    a = planned.plan.adapter
    assert (a.module_dropout, a.rank_dropout, a.bypass_dropout, len(a.fused)) == (0.3, 0.2, 0.1, 3)
    # Diag-OFT's module_dropout and rank_dropout on fused layers (was DBS577): one draw each per fused
    # module (runtime/fused.py FusedSkip, runtime/lycoris_oft.py FusedRankDraw)
    oft = {"kind": "diag-oft", "block_size": 4, "fused_projections": True, "denoiser_targets": KOHYA}
    write_spec(toy, model=FLUX, adapter={**oft, "module_dropout": 0.3, "rank_dropout": 0.2})
    planned = compile_in(toy)
    assert planned.plan is not None, planned.diagnostics
    a = planned.plan.adapter
    assert (a.module_dropout, a.rank_dropout, len(a.fused)) == (0.3, 0.2, 3)
    write_spec(toy, model=FLUX, adapter={**oft, "module_dropout": 0.3, "form": "kohya", "block_count": 4})
    assert "module dropout" in " ".join(d.message for d in compile_in(toy).diagnostics if d.code == "DBS574")


# several kinds on fused layers (blocks with their own kind: runtime/mixed_kinds.py): one LyCORIS module of
# one kind per fused Linear, every part adapted (DBS575) and in one block (DBS507)
@pytest.mark.parametrize(
    ("pattern", "targets", "refused"),
    [
        ("^single_transformer_blocks\\\\.0\\\\.(attn\\\\.to_[qkv]|proj_mlp)$", _LOKR_TARGETS, ""),
        ("^single_transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$", _LOKR_TARGETS, "DBS507"),  # LoRA proj_mlp
        (
            "^single_transformer_blocks\\\\.0\\\\.(attn\\\\.to_[qkv]|proj_mlp)$",  # proj_mlp not a target
            [t for t in _LOKR_TARGETS if t != "proj_mlp"],
            "DBS575",
        ),
    ],
)
def test_blocks_of_another_kind_cover_whole_fused_layers(toy: Path, pattern, targets, refused):
    adapter = {"kind": "lora", "rank": 2, "fused_projections": True, "denoiser_targets": targets}
    write_spec(toy, model=FLUX, adapter=adapter)
    with (toy / "spec.toml").open("a") as f:
        f.write(f'\n[[adapter.blocks]]\npattern = "{pattern}"\nkind = "lokr"\nrank = 2\nalpha = 2\n')
    planned = compile_in(toy)
    if not refused:
        assert planned.plan is not None and not codes(planned, "error")
        assert planned.plan.adapter.blocks[0].kind == "lokr" and len(planned.plan.adapter.fused) == 3
        return
    assert refused in codes(planned, "error")


def test_boft_fused_projections_plan_one_module_per_fused_layer(toy: Path):
    """LyCORIS's ButterflyOFTModule on each fused Linear (runtime/lycoris_boft.py tie_fused_boft): its blocks
    are one, so its constraint, max_norm and bypass plan; [[adapter.blocks]] and a part left out do not."""
    adapter = {
        "kind": "boft",
        "block_size": 16,
        "constraint": 1e-3,
        "max_norm": 1.0,
        "fused_projections": True,
        "bypass": True,  # the fused output rotated, each part its channels
    }
    write_spec(toy, model=FLUX, adapter={**adapter, "denoiser_targets": KOHYA})
    plan = planned_ok(toy)
    assert plan.adapter.kind == "boft" and [f.name for f in plan.adapter.fused] == [
        "img_attn_qkv",
        "txt_attn_qkv",
        "linear1",
    ]
    assert (plan.adapter.oft_constraint, plan.adapter.max_norm, plan.adapter.bypass) == (1e-3, 1.0, True)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"denoiser_targets": [t for t in KOHYA if t != "proj_mlp"]}, "linear1 without proj_mlp"),
    ],
)
def test_boft_what_a_fused_module_cannot_do_is_dbs577(toy: Path, extra, why):
    adapter = {
        "kind": "boft",
        "block_size": 16,
        "fused_projections": True,
        "denoiser_targets": KOHYA,
        **extra,
    }
    write_spec(toy, model=FLUX, adapter=adapter)
    planned = compile_in(toy)
    assert "DBS577" in codes(planned, "error")
    assert why in next(d.message for d in planned.diagnostics if d.code == "DBS577")


def test_boft_fused_blocks_over_whole_fused_layers_plan(toy: Path):
    """A block's own BOFT block size (a LyCORIS preset file's map entry, issue 12; was DBS577 for any
    block): over every part of a fused layer it plans (one ButterflyOFTModule at that size,
    runtime/lycoris_boft.py tie_fused_boft); over some parts DBS577."""
    adapter = {"kind": "boft", "block_size": 16, "fused_projections": True, "denoiser_targets": KOHYA}
    whole = "^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$"
    for pattern, refused in ((whole, False), ("attn\\\\.to_k$", True)):
        write_spec(toy, model=FLUX, adapter=adapter)
        with (toy / "spec.toml").open("a") as f:
            f.write(f'\n[[adapter.blocks]]\npattern = "{pattern}"\nblock_size = 8\n')
        planned = compile_in(toy)
        assert ("DBS577" in codes(planned, "error")) == refused, pattern
        if refused:
            assert "block sizes" in next(d.message for d in planned.diagnostics if d.code == "DBS577")
        else:
            assert [b.rank for b in planned.plan.adapter.blocks] == [8]


def test_boft_fused_projections_on_sd1_is_dbs505(toy: Path):
    write_spec(toy, adapter={"kind": "boft", "fused_projections": True})
    assert "DBS505" in codes(compile_in(toy), "error")


def test_boft_starts_from_a_flux_file_with_fused_projections_only(toy: Path):
    """lycoris.kohya --network_weights with algo=boft on Flux: one ButterflyOFTModule per fused Linear, so a
    BOFT of separate parts (fused_projections = false) has no kohya file to start from (DBS356)."""
    (toy / "prev.safetensors").write_bytes(b"")
    adapter = {
        "kind": "boft",
        "block_size": 16,
        "denoiser_targets": KOHYA,
        "init_weights": "prev.safetensors",
    }
    write_spec(toy, model=FLUX, adapter=adapter)
    planned = compile_in(toy)
    assert "DBS356" in codes(planned, "error")
    assert "fused_projections" in next(d.message for d in planned.diagnostics if d.code == "DBS356")


@pytest.mark.parametrize("kind", ["boft", "diag-oft", "glora"])
def test_t5_only_file_needs_no_fused_projections(toy: Path, kind):
    """A lycoris.kohya file of T5-XXL's modules alone (a preset reaching the text encoders, the denoiser
    untrained: train.denoiser = false) adapts no fused layer: it plans without fused_projections (was
    DBS356), and with the denoiser training such a BOFT stays DBS356."""
    import numpy as np
    from safetensors.numpy import save_file

    name = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    save_file({f"{name}.oft_blocks": np.zeros((1, 2, 4, 4), np.float16)}, str(toy / "a.st"))
    adapter = {"kind": kind, "init_weights": "a.st", "init_partial": True}
    adapter |= {"rank": 4, "alpha": 1.0} if kind == "glora" else {"block_size": 4}
    if kind == "glora":
        save_file({f"{name}.a1.weight": np.zeros((64, 4), np.float16)}, str(toy / "a.st"))
    elif kind == "diag-oft":
        save_file({f"{name}.oft_blocks": np.zeros((8, 4, 4), np.float16)}, str(toy / "a.st"))
    write_spec(toy, model=FLUX, adapter=adapter, train={"denoiser": False, "t5": True})
    planned = compile_in(toy)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.init_layers == 1
    if kind == "boft":
        write_spec(toy, model=FLUX, adapter={**adapter, "denoiser_targets": KOHYA}, train={"t5": True})
        assert "DBS356" in codes(compile_in(toy), "error")


def test_ia3_fused_projections_plans_one_module_per_fused_layer(toy: Path):
    """IA^3 with fused_projections: one IA3Module per fused Linear, whose module_dropout draw its parts
    share (runtime/fused.py FusedSkip; issue 12). Every part adapted, none on the input side (the fused
    module's input scale would be one for all parts): else DBS577; a family without fused layers DBS505."""
    ia3 = {"kind": "ia3", "fused_projections": True, "denoiser_targets": KOHYA, "module_dropout": 0.3}
    write_spec(toy, model=FLUX, adapter=ia3)
    planned = compile_in(toy)
    assert planned.plan is not None, planned.diagnostics
    a = planned.plan.adapter
    assert (a.module_dropout, [f.name for f in a.fused]) == (0.3, ["img_attn_qkv", "txt_attn_qkv", "linear1"])
    for changed, refused in (
        ({"input_targets": ["attn.to_k"]}, "input_targets"),
        ({"denoiser_targets": [t for t in KOHYA if t != "proj_mlp"]}, "linear1 without proj_mlp"),
        ({"input_targets": ["proj_out"]}, ""),  # the final layer / attention outputs: no fused layer
    ):
        write_spec(toy, model=FLUX, adapter={**ia3, **changed})
        planned = compile_in(toy)
        assert ("DBS577" in codes(planned, "error")) == bool(refused), changed
        if refused:
            assert refused in next(d.message for d in planned.diagnostics if d.code == "DBS577")
    write_spec(toy, adapter={"kind": "ia3", "fused_projections": True})
    assert "DBS505" in codes(compile_in(toy), "error")


def test_full_fused_projections_plans_one_module_per_fused_layer(toy: Path):
    """A full adapter with fused_projections: one FullModule per fused Linear, whose module_dropout draw and
    rank_dropout row mask its parts share (runtime/fused_lycoris_dropout.py LycorisDraw; issue 12). Every part
    adapted, else DBS577; a family without fused layers DBS505; without it no fused layer is planned."""
    full = {"kind": "full", "fused_projections": True, "denoiser_targets": KOHYA, "rank_dropout": 0.3}
    write_spec(toy, model=FLUX, adapter=full)
    planned = compile_in(toy)
    assert planned.plan is not None, planned.diagnostics
    a = planned.plan.adapter
    assert (a.rank_dropout, [f.name for f in a.fused]) == (0.3, ["img_attn_qkv", "txt_attn_qkv", "linear1"])
    write_spec(toy, model=FLUX, adapter={**full, "denoiser_targets": [t for t in KOHYA if t != "attn.to_v"]})
    planned = compile_in(toy)
    assert "img_attn_qkv without attn.to_v" in next(
        d.message for d in planned.diagnostics if d.code == "DBS577"
    )
    write_spec(toy, model=FLUX, adapter={**full, "fused_projections": False})
    assert compile_in(toy).plan.adapter.fused == ()
    write_spec(toy, adapter={"kind": "full", "fused_projections": True})
    assert "DBS505" in codes(compile_in(toy), "error")
