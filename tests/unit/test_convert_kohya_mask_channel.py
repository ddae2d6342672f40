"""kohya's conditioning masks (`--masked_loss` + conditioning_data_dir) are read by their red channel
(apply_masked_loss takes channel 0 of the RGB conditioning image): the converter writes mask_channel = "red";
alpha masks keep dbspec's reading (the alpha channel, mask_channel untouched)."""

from __future__ import annotations

from convert_kit import SD15, fate, images, kohya, out_path, plan_of, write

BASE = f"train_db.py --pretrained_model_name_or_path {SD15}"


def test_conditioning_masks_read_the_red_channel(tmp_path):
    images(tmp_path / "img", 2, (512, 512), caption="ohwx bag", caption_ext=".txt")
    images(tmp_path / "mask", 2, (512, 512))
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "img"\n'
        'conditioning_data_dir = "mask"\ncaption_extension = ".txt"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{BASE} --masked_loss")
    plan = plan_of(outcome, tmp_path)
    assert plan.datasets[0].mask_source == "folder" and plan.datasets[0].mask_channel == "red"
    assert 'mask_channel = "red"' in out_path(tmp_path).read_text()
    assert fate(outcome, "datasets[0].subsets[0].conditioning_data_dir") == "mapped"


def test_alpha_masks_leave_the_channel_alone(tmp_path):
    images(tmp_path / "img", 2, (512, 512), caption="ohwx bag", caption_ext=".txt")
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "img"\nalpha_mask = true\n'
        'caption_extension = ".txt"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=BASE)
    assert outcome.written and "mask_from_alpha = true" in out_path(tmp_path).read_text()
    assert "mask_channel" not in out_path(tmp_path).read_text()
