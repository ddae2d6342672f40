"""kohya settings that used to be refused as not expressible (issue 12, the leftovers): face-crop
augmentation, a warm-up at least as long as the run, train_db.py's U-Net learning rate 0, non-square
resolutions whose area is not a square number, LyCORIS's use_tucker (and what peft cannot train, refused with
the reason). Each case is a realistic kohya config; the expectation is what kohya's own code does with it
(sd-scripts library/train_util.py, train_db.py; LyCORIS lycoris/kohya.py), recomputed here or recorded by
running kohya's functions, never read back from the converter."""

from __future__ import annotations

import functools
import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from dbspec.compiler import buckets as bk
from dbspec.frontend import check_spec

from convert_kit import (
    SD15,
    SDXL,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    expressible,
    fate,
    images,
    kohya,
    out_path,
    plan_of,
    write,
)

BASE = f"train_db.py --pretrained_model_name_or_path {SD15}"
LORA = f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora"


# --- face_crop_aug_range -----------------------------------------------------------------------------------


def _faces(folder, boxes, size=(768, 640), *, short_captions=False):
    """Portraits named as kohya's detect_face_rotate.py names its crops, `stem_cx_cy_w_h.png`, with a caption
    file of the same stem (or `stem.txt`, kohya's second candidate, with `short_captions`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, (cx, cy, w, h) in enumerate(boxes):
        name = f"portrait{k}_{cx}_{cy}_{w}_{h}"
        Image.new("RGB", size, (40 + k, 90, 160)).save(folder / f"{name}.png")
        caption = folder / (f"portrait{k}.txt" if short_captions else f"{name}.txt")
        caption.write_text(f"ohwx woman, portrait {k}\n", encoding="utf-8")


FACE_TOML = """\
[general]
caption_extension = ".txt"
shuffle_caption = false
enable_bucket = false

[[datasets]]
resolution = 512
batch_size = 2

  [[datasets.subsets]]
  image_dir = "faces"
  num_repeats = 10
  face_crop_aug_range = [2.0, 4.0]
  flip_aug = true
{extra}
"""


def test_face_crop_converts_with_buckets_off_and_plans_kohya_boxes(tmp_path):
    boxes = [(384, 300, 180, 200), (500, 260, 120, 150), (200, 400, 96, 96)]
    _faces(tmp_path / "faces", boxes)
    write(tmp_path / "dataset.toml", FACE_TOML.format(extra=""))
    outcome = kohya(tmp_path, dataset_config=tmp_path / "dataset.toml", command=f"{LORA} --output_dir out")
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "datasets[0].subsets[0].face_crop_aug_range") == "mapped"
    plan = plan_of(outcome, tmp_path)
    d = plan.datasets[0]
    assert d.face_crop is not None and d.face_crop.range == (2.0, 4.0)
    assert sorted((b.cx, b.cy, b.w, b.h) for b in d.face_crop.faces) == sorted(boxes)
    # kohya's text fallback `portraitK.txt` for `portraitK_cx_cy_w_h.png`, repeats, square 512 buckets
    assert sorted(img.caption for img in d.images) == [f"ohwx woman, portrait {k}" for k in range(3)]
    assert {img.bucket for img in d.images} == {(512, 512)} and {img.repeats for img in d.images} == {10}
    assert all(not img.latent_keys for img in d.images)  # kohya crops around the face every step: no cache


def test_face_crop_images_larger_than_the_resolution_are_not_kohya_asserts(tmp_path):
    """Without buckets, cache and random_crop kohya asserts a plain image has exactly the resolution; an image
    with a face box is scaled and cut around the face instead, so only the plain one is refused."""
    _faces(tmp_path / "faces", [(384, 300, 180, 200)])
    write(tmp_path / "dataset.toml", FACE_TOML.format(extra=""))
    ok = kohya(tmp_path, dataset_config=tmp_path / "dataset.toml", command=f"{LORA} --output_dir out")
    assert ok.exit_code == 0, errors(ok)
    images(tmp_path / "faces", 1, (768, 640), prefix="plain")
    bad = kohya(tmp_path, dataset_config=tmp_path / "dataset.toml", command=f"{LORA} --output_dir out")
    assert bad.exit_code == 1 and any("plain000.png is larger" in e for e in errors(bad))


def test_face_crop_is_inert_where_kohya_never_runs_its_crop(tmp_path):
    _faces(tmp_path / "img" / "10_ohwx woman", [(384, 300, 180, 200)], size=(640, 576), short_captions=True)
    base = f"{LORA} --train_data_dir img --resolution 512 --output_dir out --face_crop_aug_range 2.0,4.0"
    for extra, why in (
        (" --enable_bucket", "only with buckets off"),
        (" --cache_latents", "latents kohya caches"),
    ):
        outcome = kohya(tmp_path, command=base + extra)
        assert outcome.exit_code == 0, errors(outcome)
        report = outcome.conversion.reports["face_crop_aug_range"]
        assert report.fate == "inert" and why in report.note
        assert plan_of(outcome, tmp_path).datasets[0].face_crop is None
    mapped = kohya(tmp_path, command=base)
    assert fate(mapped, "face_crop_aug_range") == "mapped"
    assert plan_of(mapped, tmp_path).datasets[0].face_crop.range == (2.0, 4.0)


def test_a_reversed_face_crop_range_in_a_dataset_config_converts_as_kohya_runs_it(tmp_path):
    """kohya's dataset schema takes any pair (only the command line asserts the order); crop_target then takes
    the one scale of [2, 2] and keeps its shift (was DBS403): the spec keeps the pair, which dbspec's
    face_window runs as kohya's crop_target (tests/runtime/test_face_crop.py, reversed recorded cases), and
    its check says so (DBS616)."""
    _faces(tmp_path / "faces", [(384, 300, 180, 200)])
    write(tmp_path / "dataset.toml", FACE_TOML.replace("[2.0, 4.0]", "[4.0, 2.0]").format(extra=""))
    outcome = expressible(
        kohya(tmp_path, dataset_config=tmp_path / "dataset.toml", command=f"{LORA} --output_dir out")
    )
    assert fate(outcome, "datasets[0].subsets[0].face_crop_aug_range") == "mapped"
    assert plan_of(outcome, tmp_path).datasets[0].face_crop.range == (4.0, 2.0)
    checked = check_spec(out_path(tmp_path))
    assert [d.code for d in checked.diagnostics if d.code == "DBS616"] == ["DBS616"]


def test_face_crop_range_kohya_asserts_on_is_invalid(tmp_path):
    images(tmp_path / "img" / "10_ohwx", 1, (512, 512))
    outcome = kohya(
        tmp_path, command=f"{BASE} --train_data_dir img --resolution 512 --face_crop_aug_range 4.0,2.0"
    )
    assert outcome.exit_code == 1 and fate(outcome, "face_crop_aug_range") == "invalid"


# --- a warm-up at least as long as the run -----------------------------------------------------------------


def _transformers_factor(name: str, step: int, warmup: int, total: int) -> float:
    """transformers' lr_lambda of the schedules kohya's get_scheduler_fix calls, written out from their
    source (optimization.py), for the steps kohya's run takes."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


@pytest.mark.parametrize(
    ("schedule", "warmup", "steps"),
    [("cosine", "1500", 1200), ("linear", "1.0", 800), ("constant_with_warmup", "400", 300)],
)
def test_warmup_as_long_as_the_run_converts_and_plans_kohyas_curve(tmp_path, schedule, warmup, steps):
    """A GUI preset's warm-up left in place after the run was shortened: kohya trains it, the LR climbing all
    run long; the plan warns (DBS238) and its LR points are kohya's."""
    images(tmp_path / "img" / "20_ohwx dog", 3, (512, 512), caption="ohwx dog", caption_ext=".txt")
    write(
        tmp_path / "config.toml",
        f'pretrained_model_name_or_path = "{SD15}"\ntrain_data_dir = "img"\nresolution = "512"\n'
        'output_dir = "out"\nnetwork_module = "networks.lora"\nnetwork_dim = 16\nnetwork_alpha = 8\n'
        f'learning_rate = 1e-4\nlr_scheduler = "{schedule}"\nlr_warmup_steps = {warmup}\n'
        f'max_train_steps = {steps}\ntrain_batch_size = 1\ncaption_extension = ".txt"\n',
    )
    outcome = kohya(
        tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_network.py"
    )
    assert outcome.exit_code == 0, errors(outcome)
    report = outcome.conversion.reports["lr_warmup_steps"]
    assert report.fate == "mapped" and "never reaches" in report.note
    plan = plan_of(outcome, tmp_path)
    expected_warmup = (
        int(float(warmup) * steps) if "." in warmup else int(warmup)
    )  # kohya: int(ratio x steps)
    assert plan.schedule.warmup_steps == expected_warmup >= steps
    assert any("DBS238" in w for w in plan.warnings)
    points = dict(plan.schedule.lr_points)
    assert steps - 1 in points  # the highest LR the run reaches is shown
    for step, lr in points.items():
        if step < steps:
            factor = (
                step / expected_warmup
                if step < expected_warmup
                else _transformers_factor(schedule, step, expected_warmup, steps)
            )
            assert lr == pytest.approx(1e-4 * factor, rel=1e-12)


def test_polynomial_warmup_equal_to_the_run_is_invalid_as_kohya_crashes(tmp_path):
    images(tmp_path / "img" / "20_ohwx dog", 3, (512, 512))
    cmd = (
        f"{LORA} --train_data_dir img --resolution 512 --output_dir out --max_train_steps 300 "
        "--lr_scheduler polynomial --lr_warmup_steps {w}"
    )
    crash = kohya(tmp_path, command=cmd.format(w=300))
    assert crash.exit_code == 1 and fate(crash, "lr_warmup_steps") == "invalid"
    assert "ZeroDivisionError" in crash.conversion.reports["lr_warmup_steps"].note
    longer = kohya(tmp_path, command=cmd.format(w=301))  # never reaches the division: kohya trains it
    assert longer.exit_code == 0 and fate(longer, "lr_warmup_steps") == "mapped"
    plan = plan_of(longer, tmp_path)  # at the end (step 300 < 301) still on the ramp: no division
    assert plan.schedule.lr_points[-1] == (300, pytest.approx(plan.optimizer.lr * 300 / 301, rel=1e-12))


# --- train_db.py with learning_rate 0 ----------------------------------------------------------------------

TE_ONLY = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "train"
reg_data_dir = "reg"
prior_loss_weight = 1.0
resolution = "512"
output_dir = "out"
learning_rate = 0
learning_rate_te = 1e-6
max_grad_norm = {clip}
optimizer_type = "AdamW8bit"
lr_scheduler = "constant"
max_train_steps = 400
train_batch_size = 1
mixed_precision = "bf16"
"""


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_train_db_unet_rate_zero_trains_the_text_encoder_alone(tmp_path, clip):
    """train_db.py puts the U-Net in an optimizer group at rate 0 (AdamW8bit's step and weight decay are
    multiplied by it: the U-Net never changes) and the text encoder at learning_rate_te; its clip norm counts
    the U-Net's gradients. With max_grad_norm > 0 that is optimizer.lr = 0 with the denoiser training (exact,
    DBS229 says what it costs); with max_grad_norm = 0 the U-Net's gradients change nothing: train.denoiser =
    false, cheaper."""
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    images(tmp_path / "reg" / "1_man", 8, (512, 512))
    write(tmp_path / "config.toml", TE_ONLY.format(model=SD15, clip=clip))
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_db.py")
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "learning_rate") == "mapped"
    assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs"]
    plan = plan_of(outcome, tmp_path)
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert trainable["text_encoder"] == "full" and plan.optimizer.text_encoder_lr == 1e-6
    if clip:
        assert plan.train_denoiser is True and plan.optimizer.lr == 0 and trainable["unet"] == "full"
        assert plan.optimizer.max_grad_norm == clip
    else:
        assert plan.train_denoiser is False and plan.optimizer.lr == 1e-6 and trainable["unet"] == "frozen"
    assert plan.schedule.total_steps == 400


def test_train_db_unet_rate_zero_from_the_command_line_with_the_default_clip(tmp_path):
    """A realistic command line: no max_grad_norm (kohya's default 1.0), AdamW, learning_rate 0 with
    learning_rate_te: the denoiser at rate 0; the plan warns (DBS229) what that costs."""
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    command = (
        f'accelerate launch train_db.py --pretrained_model_name_or_path="{SD15}" --train_data_dir=train '
        "--resolution=512 --output_dir=out --train_batch_size=1 --learning_rate=0 --learning_rate_te=5e-6 "
        '--optimizer_type="AdamW" --max_train_steps=200 --mixed_precision="bf16"'
    )
    outcome = kohya(tmp_path, command=command)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "learning_rate") == "mapped"
    assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs"]
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.optimizer.lr == 0 and plan.optimizer.text_encoder_lr == 5e-6
    assert plan.optimizer.max_grad_norm == 1.0


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ("", "changes nothing"),  # no learning_rate_te: both models share rate 0
        ("learning_rate_te = 1e-6\nstop_text_encoder_training = -1\n", "changes nothing"),
        # (Adafactor's relative step trains anyway: test_convert_kohya_unet_rate_zero.py)
    ],
)
def test_train_db_unet_rate_zero_where_it_is_not_a_frozen_unet(tmp_path, extra, why):
    images(tmp_path / "train" / "40_ohwx man", 2, (512, 512))
    write(
        tmp_path / "config.toml",
        f'pretrained_model_name_or_path = "{SD15}"\ntrain_data_dir = "train"\nresolution = "512"\n'
        f"learning_rate = 0\nmax_train_steps = 100\n{extra}",
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_db.py")
    assert outcome.exit_code == 1 and fate(outcome, "learning_rate") == "unsupported"
    assert why in outcome.conversion.reports["learning_rate"].note


# --- a non-square resolution whose area is not a square number ---------------------------------------------

# Recorded by running sd-scripts' BucketManager and make_bucket_resolutions (HEAD, extracted unchanged into a
# scratch folder): for each "W,H|min|max|step|no_upscale", the bucket list and every image's (size, bucket,
# resized) from select_bucket.
KOHYA_BUCKETS = json.loads((Path(__file__).parent / "kohya_nonsquare_buckets.json").read_text())


@pytest.mark.parametrize("key", sorted(KOHYA_BUCKETS))
def test_bucket_list_of_a_non_square_resolution_equals_kohya(key):
    reso, low, high, step, no_upscale = key.split("|")
    if no_upscale == "1":
        return  # no list: each image gets a bucket of its own (below)
    size = tuple(int(x) for x in reso.split(","))
    assert [list(b) for b in bk.bucket_list(size, int(low), int(high), int(step))] == KOHYA_BUCKETS[key][
        "buckets"
    ]


@functools.cache
def _png(size: tuple[int, int], red: int) -> bytes:
    """A plain image's PNG file, encoded once per test process: the six non-square cases place the same 65
    sizes (390 encodes, most of their time, for 65 distinct files)."""
    out = io.BytesIO()
    Image.new("RGB", size, (red, 90, 160)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _bucket_run(tmp_path, placed, reso, low, high, step, no_upscale):
    """kohya's conversion of a bucketed dataset config holding an image of each recorded size (`placed`)."""
    folder = tmp_path / "img"
    folder.mkdir()
    for k, ((w, h), _, _) in enumerate(placed):
        (folder / f"img{k:03d}.png").write_bytes(_png((w, h), k % 250))
        (folder / f"img{k:03d}.txt").write_text("ohwx dog\n", encoding="utf-8")
    write(
        tmp_path / "dataset.toml",
        f'[general]\ncaption_extension = ".txt"\nenable_bucket = true\nmin_bucket_reso = {low}\n'
        f"max_bucket_reso = {high}\nbucket_reso_steps = {step}\n"
        f"bucket_no_upscale = {'true' if no_upscale == '1' else 'false'}\n"
        f'[[datasets]]\nresolution = [{reso}]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = "img"\n',
    )
    script = "sdxl_train_network.py" if step == "32" else "train_network.py"
    model = SDXL if step == "32" else SD15
    outcome = kohya(
        tmp_path,
        dataset_config=tmp_path / "dataset.toml",
        command=f"{script} --pretrained_model_name_or_path {model} --network_module networks.lora "
        "--output_dir out --max_train_epochs 1",
    )
    return outcome


@pytest.mark.parametrize("key", sorted(KOHYA_BUCKETS))
def test_non_square_resolution_converts_and_plans_kohyas_buckets(tmp_path, key):
    reso, low, high, step, no_upscale = key.split("|")
    placed = KOHYA_BUCKETS[key]["placed"]
    outcome = _bucket_run(tmp_path, placed, reso, low, high, step, no_upscale)
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    d = plan.datasets[0]
    width, height = (int(x) for x in reso.split(","))
    assert (d.resolution, d.resolution_height) == (width, height)  # the area W*H is not a square number
    got = {img.rel: (list(img.bucket), list(img.resized)) for img in d.images}
    assert got == {f"img{k:03d}.png": (bucket, resized) for k, (_, bucket, resized) in enumerate(placed)}
    if no_upscale == "0":  # every bucket the plan uses is one of kohya's
        assert {tuple(b.size) for b in plan.buckets} <= {tuple(b) for b in KOHYA_BUCKETS[key]["buckets"]}


# A resolution with a side that is not a multiple of 8, with buckets: kohya reads only its area (make_bucket_
# resolutions' max_area, the no-upscale max_area), so a W x H of the same area whose sides are multiples of 8
# has the same buckets. Recorded the same way (sd-scripts' BucketManager, HEAD, extracted unchanged).
KOHYA_ODD = json.loads((Path(__file__).parent / "kohya_odd_resolution_buckets.json").read_text())
SAME_AREA = {(1020, 512): (960, 544), (1020, 640): (960, 680), (1020, 1024): (960, 1088)}


@pytest.mark.parametrize("key", sorted(KOHYA_ODD))
def test_a_resolution_off_the_8_grid_converts_to_one_of_the_same_area_with_kohyas_buckets(tmp_path, key):
    """Was DBS403 ("dbspec needs a multiple of 8"): the spec's resolution is the pair of the same area nearest
    in aspect; every image lands in kohya's bucket at kohya's resize, and the bucket list is kohya's."""
    reso, low, high, step, no_upscale = key.split("|")
    size = tuple(int(x) for x in reso.split(","))
    placed = KOHYA_ODD[key]["placed"]
    outcome = _bucket_run(tmp_path, placed, reso, low, high, step, no_upscale)
    assert outcome.exit_code == 0, errors(outcome)
    assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs"]
    plan = plan_of(outcome, tmp_path)
    d = plan.datasets[0]
    spec_size = (d.resolution, d.resolution_height)
    assert spec_size == SAME_AREA[size] and spec_size[0] * spec_size[1] == size[0] * size[1]
    got = {img.rel: (list(img.bucket), list(img.resized)) for img in d.images}
    assert got == {f"img{k:03d}.png": (bucket, resized) for k, (_, bucket, resized) in enumerate(placed)}
    if no_upscale == "0":  # the same bucket list, and every bucket the plan uses is one of kohya's
        kohya_list = [list(b) for b in bk.bucket_list(spec_size, int(low), int(high), int(step))]
        assert kohya_list == KOHYA_ODD[key]["buckets"]
        assert {tuple(b.size) for b in plan.buckets} <= {tuple(b) for b in KOHYA_ODD[key]["buckets"]}


@pytest.mark.parametrize(
    ("resolution", "buckets", "says"),
    [
        ("516", "--enable_bucket", "no W x H of that area"),  # 516 * 516 is not a multiple of 64
        ("1020,700", "--enable_bucket", "no W x H of that area"),  # both sides 4 mod 8
        ("1020,512", "", "multiple of 8 between 64 and 4096"),  # buckets off: the one bucket is W x H
    ],
)
def test_a_resolution_off_the_8_grid_without_a_same_area_pair_says_why(tmp_path, resolution, buckets, says):
    images(tmp_path / "img" / "10_ohwx dog", 2, (1100, 800))
    outcome = kohya(
        tmp_path, command=f"{LORA} --train_data_dir img --resolution {resolution} --output_dir out {buckets}"
    )
    assert outcome.exit_code == 1 and fate(outcome, "resolution") == "unsupported"
    assert says in outcome.conversion.reports["resolution"].note


def test_non_square_resolution_with_buckets_off_trains_w_by_h(tmp_path):
    """kohya without buckets: one bucket of the resolution itself, W x H (cover-resized when cached)."""
    images(tmp_path / "img" / "10_ohwx dog", 2, (1000, 700))
    outcome = kohya(
        tmp_path, command=f"{LORA} --train_data_dir img --resolution 768,512 --output_dir out --cache_latents"
    )
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert {img.bucket for img in plan.datasets[0].images} == {(768, 512)}
    assert plan.validation.size == (768, 512)


# --- LyCORIS network_args: use_tucker, use_scalar, wd_on_output, DoRA on LoHa/LoKr --------------------------

LYCORIS = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "lycoris.kohya"
network_dim = 16
network_alpha = 8
network_args = [{args}]
learning_rate = 1e-4
optimizer_type = "AdamW"
max_train_steps = 500
mixed_precision = "bf16"
"""


def _lycoris(tmp_path, args: str):
    images(tmp_path / "img" / "20_ohwx dog", 2, (512, 512))
    write(tmp_path / "cfg.toml", LYCORIS.format(model=SD15, args=args))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


@pytest.mark.parametrize(
    ("algo", "switch"),
    [
        ("loha", '"use_tucker=True"'),
        ("lokr", '"use_tucker=True"'),
        ("loha", '"use_cp=True"'),  # the older names LyCORIS's kohya network still reads
        ("lokr", '"use_conv_cp=True"'),
        ("loha", '"use_tucker=0"'),  # str_bool: only "false" is false
        ("lokr", '"disable_conv_cp=True"'),  # LyCORIS copies an old name's value into use_tucker
    ],
)
def test_lycoris_tucker_on_loha_and_lokr_converts(tmp_path, algo, switch):
    outcome = _lycoris(tmp_path, f'"algo={algo}", "preset=full", "conv_dim=8", "conv_alpha=4", {switch}')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.rank, a.conv_rank, a.conv_alpha) == (algo, True, 16, 8, 4.0)


@pytest.mark.parametrize("algo", ["locon", "lora"])
@pytest.mark.parametrize(
    "switch",
    [
        '"use_tucker=True"',
        '"use_cp=True"',  # the older names LyCORIS's kohya network still reads
        '"use_conv_cp=true"',
        '"disable_conv_cp=True"',  # LyCORIS copies an old name's value into use_tucker first
        '"disable_conv_cp="',  # and `not ""` is true
        '"use_tucker=False", "use_cp=True"',  # an old name overrides use_tucker, wherever it stands
    ],
)
def test_lycoris_tucker_on_lora_and_locon_is_lora_mid(tmp_path, algo, switch):
    """LyCORIS LoCon's Tucker form (lora_mid between a 1x1 lora_down and lora_up on 3x3 convolutions)."""
    outcome = _lycoris(tmp_path, f'"algo={algo}", "conv_dim=8", "conv_alpha=4", {switch}')
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_args") == "mapped"
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.tucker, a.dora, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (
        "lora",
        True,
        False,
        16,
        8.0,
        8,
        4.0,
    )
    assert "conv1" in a.conv_targets and "conv_in" in a.conv_targets  # LyCORIS's "full" preset


@pytest.mark.parametrize("algo", ["loha", "locon"])
@pytest.mark.parametrize(
    "switch", ['"disable_conv_cp=False"', '"use_tucker=True", "disable_conv_cp=False"', '"use_cp=false"']
)
def test_lycoris_old_tucker_names_set_false_leave_it_off(tmp_path, algo, switch):
    """lycoris-lora 4 copies an old name's value into use_tucker (over an explicit use_tucker), then tests
    `not disable_conv_cp or use_conv_cp or use_cp or use_tucker`: "False" ends up in use_tucker, off. The
    differential check against LyCORIS's own create_network is tests/runtime/test_locon_tucker.py."""
    outcome = _lycoris(tmp_path, f'"algo={algo}", "conv_dim=8", {switch}')
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.tucker is False


@pytest.mark.parametrize(
    "switch", ['"use_tucker=False"', '"use_cp=false"', '"disable_conv_cp=False"', '"use_scalar=False"']
)
def test_lycoris_switches_left_off_change_nothing(tmp_path, switch):
    outcome = _lycoris(tmp_path, f'"algo=loha", {switch}')
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.tucker is False


@pytest.mark.parametrize("algo", ["loha", "locon"])
def test_lycoris_tucker_without_adapted_convolutions_is_inert(tmp_path, algo):
    outcome = _lycoris(tmp_path, f'"algo={algo}", "preset=attn-mlp", "use_tucker=True"')
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.tucker is False  # no k x k convolution is adapted


def test_lokr_rs_lora_scales_low_rank_alpha_and_full_factors_by_the_square_root_of_the_rank(tmp_path):
    """LokrModule with rs_lora: a low-rank layer at alpha / sqrt(dim) (the plain alpha x sqrt(dim), conv_dim's
    alike), a layer whose two Kronecker factors are full at dim / sqrt(dim) (adapter.rank_stabilized)."""
    outcome = _lycoris(tmp_path, '"algo=lokr", "conv_dim=4", "conv_alpha=2", "rs_lora=True"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.lokr_unit_scale and a.lokr_rank_stabilized
    assert (a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (16, 8 * 16**0.5, 4, 2 * 4**0.5)


def test_wd_on_output_without_dora_changes_nothing(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=locon", "conv_dim=8", "wd_on_output=False"')
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.dora is False


ATTRIBUTES_TOML = """
[general]
enable_bucket = true

[[datasets]]
resolution = 512

  [[datasets.subsets]]
  image_dir = "img"
  num_repeats = 4
  class_tokens = "ohwx dog"
  custom_attributes = { diff_output_preservation = true }
"""


def test_custom_attributes_are_inert_for_scripts_that_never_read_them(tmp_path):
    """Only the LoRA scripts read a subset's custom_attributes in their training step
    (diff_output_preservation: tests/unit/test_convert_kohya_preservation.py); train_db.py only logs them."""
    images(tmp_path / "img", 2, (512, 512))
    write(tmp_path / "dataset.toml", ATTRIBUTES_TOML)
    command = f"{BASE} --output_dir out"
    outcome = kohya(tmp_path, dataset_config=tmp_path / "dataset.toml", command=command)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "datasets[0].subsets[0].custom_attributes") == "inert"
