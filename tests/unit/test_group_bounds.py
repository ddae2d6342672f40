"""schedule.base_lr / max_lr as per-group tables: the plan names the optimizer's groups as the runtime builds
them, refuses a table that misses or invents a group (DBS416), names the blocks' groups, records
each group's bounds and curve, and round-trips through the plan file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbspec.frontend import plan_spec
from dbspec.plan.io import plan_from_json, plan_to_json
from tests.runtime.runspec import CPU, TEXT_ENCODER_LORA, write_spec

CYCLIC = ['schedule.lr_schedule="cyclic"', "schedule.step_size_up=3", "schedule.max_lr=1e-2"]


def _planned(
    tmp_path: Path, overrides: list[str], extra: str = TEXT_ENCODER_LORA, base: str = "builtin:tiny-sd1"
):
    spec = write_spec(tmp_path, steps=9, extra=extra, base=base)
    return plan_spec(spec, CPU, str(spec), overrides)


def _codes(planned) -> dict[str, str]:
    return {d.code: d.message for d in planned.diagnostics}


def _groups(planned) -> list[tuple[str, float, float, float]]:
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    return [(g.name, g.rate, g.base_lr, g.max_lr) for g in planned.plan.schedule.torch.groups]


def test_a_number_keeps_one_bound_for_every_group(tmp_path):
    plan = _planned(tmp_path, [*CYCLIC, "schedule.base_lr=1e-4"]).plan
    assert plan.schedule.torch.groups == () and plan.schedule.group_lr_points == ()


def test_lora_groups_and_their_curves(tmp_path):
    planned = _planned(
        tmp_path,
        [
            *CYCLIC,
            "optimizer.text_encoder_lr=5e-4",
            "schedule.base_lr={text_encoder = 1e-5, denoiser = 1e-4}",
        ],
    )
    assert _groups(planned) == [("denoiser", 1e-3, 1e-4, 1e-2), ("text_encoder", 5e-4, 1e-5, 1e-2)]
    s = planned.plan.schedule
    curves = dict(s.group_lr_points)
    # triangular, step_size_up = step_size_down = 3: base_lr at 0, the peak at 3 and 9
    points = dict(curves["text_encoder"])
    assert points[0] == 1e-5 and points[9] == pytest.approx(1e-2)
    assert dict(curves["denoiser"])[0] == 1e-4 and s.lr_points == curves["denoiser"]


def test_max_lr_zero_in_a_table_is_the_groups_own_rate(tmp_path):
    planned = _planned(
        tmp_path,
        [*CYCLIC, "optimizer.text_encoder_lr=5e-4", "schedule.max_lr={text_encoder = 0, denoiser = 2e-3}"],
    )
    assert _groups(planned) == [("denoiser", 1e-3, 0.0, 2e-3), ("text_encoder", 5e-4, 0.0, 0.0)]
    points = dict(dict(planned.plan.schedule.group_lr_points)["text_encoder"])
    assert points[9] == pytest.approx(5e-4)  # the third peak (steps 3 and 9 with up = down = 3)


def test_loraplus_groups_follow_their_own(tmp_path):
    extra = TEXT_ENCODER_LORA.replace('kind = "lora"', 'kind = "lora"\nloraplus_denoiser_ratio = 8')
    planned = _planned(
        tmp_path,
        [*CYCLIC, "schedule.base_lr={denoiser = 1e-4, denoiser_lora_up = 8e-4, text_encoder = 1e-5}"],
        extra=extra,
    )
    assert [name for name, *_ in _groups(planned)] == ["denoiser", "denoiser_lora_up", "text_encoder"]
    assert _groups(planned)[1][1] == pytest.approx(8e-3)  # lr x ratio


def test_sdxl_second_text_encoder_has_a_group_only_at_its_own_rate(tmp_path):
    shared = _planned(
        tmp_path,
        [*CYCLIC, "schedule.base_lr={denoiser = 1e-4, text_encoder = 1e-5}"],
        base="builtin:tiny-sdxl",
    )
    assert [name for name, *_ in _groups(shared)] == ["denoiser", "text_encoder"]
    own = _planned(
        tmp_path,
        [
            *CYCLIC,
            "optimizer.text_encoder_2_lr=2e-4",
            "schedule.base_lr={denoiser = 1e-4, text_encoder = 1e-5, text_encoder_2 = 2e-5}",
        ],
        base="builtin:tiny-sdxl",
    )
    assert [name for name, *_ in _groups(own)] == ["denoiser", "text_encoder", "text_encoder_2"]


def test_full_fine_tune_of_the_denoiser_alone(tmp_path):
    planned = _planned(tmp_path, [*CYCLIC, "schedule.base_lr={denoiser = 1e-4}"], extra="")
    assert _groups(planned) == [("denoiser", 1e-3, 1e-4, 1e-2)]


def test_unknown_and_missing_groups_are_named(tmp_path):
    planned = _planned(tmp_path, [*CYCLIC, "schedule.base_lr={denoiser = 1e-4, text_encoders = 1e-5}"])
    assert planned.plan is None
    message = _codes(planned)["DBS416"]
    assert "names `text_encoders`, which the optimizer does not have" in message
    assert "lacks `text_encoder`" in message and "The groups here: denoiser, text_encoder" in message
    missing = _planned(tmp_path, [*CYCLIC, "schedule.base_lr={denoiser = 1e-4}"])
    assert "lacks `text_encoder`" in _codes(missing)["DBS416"]


def test_one_cycle_takes_a_max_lr_table_and_ignores_a_base_lr_one(tmp_path):
    planned = _planned(
        tmp_path,
        ['schedule.lr_schedule="one_cycle"', "schedule.max_lr={denoiser = 1e-3, text_encoder = 2e-4}"],
    )
    assert [(name, top) for name, _, _, top in _groups(planned)] == [
        ("denoiser", 1e-3),
        ("text_encoder", 2e-4),
    ]


def test_block_own_rates_name_their_groups(tmp_path):
    """A block at its own rate (kohya Flux's network_reg_lrs) trains in `denoiser_lr<rate>`; `denoiser`
    may be left out (the blocks may cover the denoiser)."""
    extra = (
        TEXT_ENCODER_LORA
        + '\n[[adapter.blocks]]\npattern = "down_blocks"\nrank = 2\nalpha = 2.0\nlr = 1e-3\n'
    )
    table = '{"denoiser_lr0.001" = 2e-5, text_encoder = 1e-5}'
    planned = _planned(tmp_path, [*CYCLIC, f"schedule.base_lr={table}"], extra=extra)
    assert [(name, r, base) for name, r, base, _ in _groups(planned)] == [
        ("denoiser_lr0.001", 1e-3, 2e-5),
        ("text_encoder", planned.plan.optimizer.text_encoder_lr, 1e-5),
    ]


def test_block_lr_scales_name_their_groups(tmp_path):
    """An lr_scale block's adapters train in `denoiser_x<scale>` (runtime/blocks.py): a table names it."""
    extra = (
        TEXT_ENCODER_LORA
        + '\n[[adapter.blocks]]\npattern = "down_blocks"\nrank = 2\nalpha = 2.0\nlr_scale = 0.5\n'
    )
    table = '{denoiser = 1e-4, "denoiser_x0.5" = 3e-5, text_encoder = 1e-5}'
    planned = _planned(tmp_path, [*CYCLIC, f"schedule.base_lr={table}"], extra=extra)
    assert planned.plan is not None, _codes(planned)
    rate = planned.plan.optimizer.lr
    assert [(name, r, base) for name, r, base, _ in _groups(planned)] == [
        ("denoiser", rate, 1e-4),
        ("denoiser_x0.5", rate * 0.5, 3e-5),
        ("text_encoder", planned.plan.optimizer.text_encoder_lr, 1e-5),
    ]
    # a table that names a group the optimizer cannot have is still DBS416
    wrong = '{denoiser = 1e-4, "denoiser_x0.25" = 3e-5, text_encoder = 1e-5}'
    assert "DBS416" in _codes(_planned(tmp_path, [*CYCLIC, f"schedule.base_lr={wrong}"], extra=extra))


def test_text_encoder_block_rates_split_the_text_encoders_group(tmp_path):
    """[[adapter.text_encoder_blocks]] at their own rate (kohya Flux's network_reg_lrs on CLIP-L) train in
    `text_encoder_lr<rate>`, scales in `text_encoder_x<scale>` (each LoRA+ up group's too), held blocks in
    none; the tables may leave `text_encoder` out (the blocks may cover the encoder)."""
    extra = (
        TEXT_ENCODER_LORA.replace('kind = "lora"', 'kind = "lora"\nloraplus_text_encoder_ratio = 4')
        + "\n[[adapter.text_encoder_blocks]]\npattern = 'layers\\.0\\.'\nrank = 2\nalpha = 2.0\nlr = 2e-4\n"
        + "\n[[adapter.text_encoder_blocks]]\npattern = 'layers\\.1\\.'\nrank = 2\nalpha = 2.0\n"
        + "lr_scale = 0.5\n"
        + "\n[[adapter.text_encoder_blocks]]\npattern = 'fc2'\nrank = 2\nalpha = 2.0\nlr_scale = 0\n"
    )
    names = (
        "denoiser",
        "text_encoder_lora_up",
        "text_encoder_x0.5",
        "text_encoder_lora_up_x0.5",
        "text_encoder_lr0.0002",
        "text_encoder_lora_up_lr0.0002",
    )
    table = "{" + ", ".join(f'"{n}" = 1e-5' for n in names) + "}"
    planned = _planned(tmp_path, [*CYCLIC, f"schedule.base_lr={table}"], extra=extra)
    te = planned.plan.optimizer.text_encoder_lr
    assert [(name, r) for name, r, *_ in _groups(planned)] == [
        ("denoiser", planned.plan.optimizer.lr),
        ("text_encoder_lora_up", pytest.approx(te * 4)),
        ("text_encoder_x0.5", pytest.approx(te * 0.5)),
        ("text_encoder_lora_up_x0.5", pytest.approx(te * 4 * 0.5)),
        ("text_encoder_lr0.0002", 2e-4),
        ("text_encoder_lora_up_lr0.0002", pytest.approx(8e-4)),
    ]
    # a held block has no group to name (which groups hold parameters the runtime checks, as the denoiser's)
    held = table.replace("}", ', "text_encoder_x0" = 1e-5}')
    assert "DBS416" in _codes(_planned(tmp_path, [*CYCLIC, f"schedule.base_lr={held}"], extra=extra))


def test_groups_round_trip_through_the_plan_file(tmp_path):
    plan = _planned(tmp_path, [*CYCLIC, "schedule.base_lr={denoiser = 1e-4, text_encoder = 1e-5}"]).plan
    assert plan_from_json(plan_to_json(plan)) == plan


def test_momentum_tables_give_each_group_its_momentum_points(tmp_path):
    planned = _planned(
        tmp_path,
        [*CYCLIC, "schedule.base_momentum={denoiser = 0.8, text_encoder = 0.7}", "schedule.max_momentum=0.9"],
    )
    s = planned.plan.schedule
    assert [(g.name, g.base_momentum, g.max_momentum) for g in s.torch.groups] == [
        ("denoiser", 0.8, 0.9),
        ("text_encoder", 0.7, 0.9),
    ]
    momenta = {name: dict(points) for name, points in s.group_momentum_points}
    assert momenta["text_encoder"][9] == pytest.approx(0.7) and momenta["denoiser"][9] == pytest.approx(0.8)
    assert s.momentum_points == s.group_momentum_points[0][1]
    off = _planned(
        tmp_path, [*CYCLIC, "schedule.cycle_momentum=false", "schedule.base_momentum={denoiser = 0.8}"]
    )
    assert off.plan is not None and off.plan.schedule.torch.groups == ()  # the momenta are not read


# the denoiser held whole at lr_scale 0 (kohya's U-Net modules at unet_lr 0: convert/kohya/held_unet.py)
HELD = '\n[[adapter.blocks]]\npattern = ""\nrank = {rank}\nalpha = 1.0\nlr_scale = 0\n'


@pytest.mark.parametrize(
    ("adapter", "rank"),
    [
        ('kind = "lora"\nrank = 2\nloraplus_ratio = 4', 2),
        ('kind = "dylora"\nrank = 4\nunit = 2\nloraplus_ratio = 4', 4),
        ('kind = "glora"\nrank = 2', 2),
    ],
)
def test_a_denoiser_held_whole_has_no_group_to_name(tmp_path, adapter, rank):
    """Held whole, the denoiser's adapter is in no optimizer group (its LoRA+ up group neither): the tables
    name the text encoder's groups alone, as kohya's lists (one value per group it keeps) do; naming
    `denoiser` is DBS416 (it was required: a held denoiser's tables could not be written)."""
    extra = TEXT_ENCODER_LORA.replace('kind = "lora"\nrank = 2', adapter) + HELD.format(rank=rank)
    ups = "loraplus" in adapter
    names = ("text_encoder", "text_encoder_lora_up") if ups else ("text_encoder",)
    table = "{" + ", ".join(f'"{n}" = 1e-5' for n in names) + "}"
    planned = _planned(tmp_path, [*CYCLIC, f"schedule.base_lr={table}"], extra=extra)
    assert [name for name, *_ in _groups(planned)] == list(names)
    wrong = table.replace("}", ", denoiser = 1e-5}")
    assert (
        "names `denoiser`"
        in _codes(_planned(tmp_path, [*CYCLIC, f"schedule.base_lr={wrong}"], extra=extra))["DBS416"]
    )


def test_a_held_block_beside_trained_ones_keeps_the_denoisers_groups(tmp_path):
    """A held block over part of the denoiser (no group of its own: DBS593) leaves the rest training in
    `denoiser` and a scaled block in `denoiser_x<s>`: the tables name those, not a `denoiser_x0`."""
    extra = (
        TEXT_ENCODER_LORA
        + '\n[[adapter.blocks]]\npattern = "down_blocks"\nrank = 2\nalpha = 2.0\nlr_scale = 0\n'
        + '\n[[adapter.blocks]]\npattern = "up_blocks"\nrank = 2\nalpha = 2.0\nlr_scale = 0.5\n'
    )
    table = '{denoiser = 1e-4, "denoiser_x0.5" = 3e-5, text_encoder = 1e-5}'
    planned = _planned(tmp_path, [*CYCLIC, f"schedule.base_lr={table}"], extra=extra)
    assert [name for name, *_ in _groups(planned)] == ["denoiser", "denoiser_x0.5", "text_encoder"]
    held = table.replace("}", ', "denoiser_x0" = 1e-5}')
    assert "DBS416" in _codes(_planned(tmp_path, [*CYCLIC, f"schedule.base_lr={held}"], extra=extra))
    grouped = extra.replace("lr_scale = 0\n", 'lr_scale = 0\ngroup = "down"\n', 1)
    assert "DBS593" in _codes(_planned(tmp_path, [*CYCLIC, f"schedule.base_lr={table}"], extra=grouped))
