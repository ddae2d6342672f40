"""lycoris.kohya dropouts on Flux / SD3 / Chroma that converted while docs/converting.md still called them
DBS403 (issue 12; tests/runtime/test_lycoris_sd3_dylora_norms_full_dropout.py holds them to lycoris-lora
4.1.3's network on kohya's layers): an algo=dylora network's `train_norm` with `rank_dropout` whose preset
file's one algorithm reads no rate (the NormModules' alone: `norm_rank_dropout`, the adapter's
`rank_dropout` 0) and on SD3 beside entries on both CLIP encoders' norms; an algo=full network's
`module_dropout` / `rank_dropout` on SD3's and Chroma's fused Linears (`fused_projections`)."""

from __future__ import annotations

from convert_kit import codes, component_file, errors, fate, images, kohya, messages, plan_of

DROPS = '"rank_dropout=0.25" "module_dropout=0.3"'
DYLORA = f'"algo=dylora" "block_size=2" "train_norm=True" {DROPS}'
SCRIPTS = {
    "flux": (
        "flux_train_network.py --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev --clip_l "
        "clip_l.safetensors --t5xxl t5xxl.safetensors --ae ae.safetensors --model_prediction_type raw "
        "--guidance_scale 1.0",
        ("clip_l", "t5xxl", "ae"),
    ),
    "sd3": (
        "sd3_train_network.py --pretrained_model_name_or_path stabilityai/stable-diffusion-3.5-large "
        "--clip_l clip_l.safetensors --clip_g clip_g.safetensors --t5xxl t5xxl.safetensors",
        ("clip_l", "clip_g", "t5xxl"),
    ),
    "chroma": (
        "flux_train_network.py --pretrained_model_name_or_path Chroma1-HD.safetensors --model_type chroma "
        "--t5xxl t5xxl.safetensors --ae ae.safetensors --apply_t5_attn_mask --guidance_scale 0.0",
        ("Chroma1-HD", "t5xxl", "ae"),
    ),
}
# Flux / Chroma: one image q/k/v, every CLIP-L encoder layer and T5-XXL block whole
T5_FILE = """\
unet_target_module = []
unet_target_name = ["double_blocks.0.img_attn.qkv"]
text_encoder_target_module = ["CLIPEncoderLayer", "T5Block"]
"""
SD3_ENTRIES = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv"]
text_encoder_target_module = ["CLIPEncoderLayer"]

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "loha"
dim = 2
"""
FULL_FILES = {
    "sd3": 'unet_target_module = []\nunet_target_name = ["joint_blocks.*.attn.qkv"]\n'
    "text_encoder_target_module = []\n",
    "chroma": 'unet_target_module = []\nunet_target_name = ["double_blocks.*_attn.qkv", '
    '"single_blocks.*.linear1"]\ntext_encoder_target_module = []\n',
}


def _converted(tmp_path, family: str, preset: str, args: str):
    outcome = _outcome(tmp_path, family, preset, args)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    base = [f"model.base=builtin:tiny-{family}", "model.text_encoder_files=[]", 'model.vae=""']
    base += ['model.denoiser_file=""'] if family == "chroma" else []
    return outcome, plan_of(outcome, tmp_path, base).adapter


def _outcome(tmp_path, family: str, preset: str, args: str):
    script, files = SCRIPTS[family]
    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in files:
        component_file(tmp_path / f"{name}.safetensors")
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch {script} --train_data_dir=x --resolution=64 "
        "--network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "preset=p.toml" {args} --learning_rate=1e-2 --max_train_steps=2 '
        "--save_model_as=safetensors --output_dir=out",
    )
    return outcome


def test_dylora_norms_alone_draw_rank_dropout_on_flux(tmp_path):
    """No entry reads the rate: the NormModules' alone; T5-XXL's DyLoRA layers train, its T5LayerNorms
    (LyCORIS: "not supported") take no offsets."""
    outcome, a = _converted(tmp_path, "flux", T5_FILE, DYLORA)
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == ("dylora", 0.0, 0.25, 0.3)
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and a.t5_targets
    assert fate(outcome, "network_args rank_dropout") == "mapped"
    assert "T5LayerNorm(s)" in outcome.conversion.reports["network_args train_norm"].note


def test_dylora_norms_and_entries_share_rank_dropout_on_sd3(tmp_path):
    """Beside a LoHa entry on the fused q/k/v: the adapter's rank_dropout (the entry's) and the norms' (the
    same rate), CLIP-L's and CLIP-G's LayerNorms offset."""
    _, a = _converted(tmp_path, "sd3", SD3_ENTRIES, DYLORA)
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == ("dylora", 0.25, 0.25, 0.3)
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and a.fused
    assert a.text_encoder_2_norms in (None, a.text_encoder_norms)
    assert [b.kind for b in a.blocks] == ["loha"]


def test_dylora_train_norm_reaching_t5_alone_on_chroma_is_inert(tmp_path):
    """Chroma has no CLIP: LyCORIS's NormModules on T5's T5LayerNorms are "not supported", so train_norm
    changes nothing and the rate no module reads is ignored (DBS405), as kohya runs them."""
    outcome, a = _converted(tmp_path, "chroma", T5_FILE.replace('"CLIPEncoderLayer", ', ""), DYLORA)
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == ("dylora", 0.0, 0.0, 0.3)
    assert not a.text_encoder_norms and a.t5_targets
    assert fate(outcome, "network_args train_norm") == "inert"
    assert "rank_dropout" in messages(outcome, "DBS405")


def test_full_network_dropouts_on_sd3_and_chroma_fused_layers(tmp_path):
    """One FullModule per fused Linear drawing both (was said DBS403): the adapter's module_dropout and
    rank_dropout with fused_projections."""
    for family, preset in FULL_FILES.items():
        (tmp_path / family).mkdir()
        _, a = _converted(tmp_path / family, family, preset, f'"algo=full" {DROPS}')
        assert (a.kind, a.rank_dropout, a.module_dropout) == ("full", 0.25, 0.3) and a.fused, family


def test_full_module_on_t5_gated_output_stops_kohya(tmp_path):
    """LyCORIS's FullModule on T5-XXL's DenseReluDense.wo (the network's algo=full, or a map entry's)
    deletes the Linear's weight at apply_to, which transformers' T5DenseGatedActDense.forward reads: kohya's
    first T5 encoding raises AttributeError (DBS402; was converted to train.t5's full copies). T5's
    attention alone, or the gated MLP's inputs, convert; with network_train_unet_only apply_to drops T5's
    modules."""
    entry = '\n[module_algo_map.T5DenseGatedActDense]\nalgo = "full"\n'
    for name, family, preset, args in (
        ("network", "flux", T5_FILE, '"algo=full"'),
        (
            "sd3",
            "sd3",
            T5_FILE.replace("double_blocks.0.img_attn.qkv", "joint_blocks.0.x_block.attn.qkv"),
            '"algo=full"',
        ),
        ("entry", "flux", T5_FILE + entry, '"algo=locon"'),
    ):
        (tmp_path / name).mkdir()
        outcome = _outcome(tmp_path / name, family, preset, args)
        assert "T5DenseGatedActDense" in messages(outcome, "DBS402"), (name, errors(outcome))
    attention = T5_FILE.replace('"T5Block"', '"T5Attention"')
    for name, preset, flags in (
        ("attention", attention, ""),
        ("unet_only", T5_FILE, " --network_train_unet_only"),
    ):
        (tmp_path / name).mkdir()
        outcome = _outcome(tmp_path / name, "flux", preset, '"algo=full"' + flags)
        assert "DBS402" not in codes(outcome), (name, errors(outcome))
