"""lycoris.kohya's `rank_dropout` on a LoCon or LoHa network on kohya's Flux beside a preset file's entries of
LyCORIS's other algorithms (issue 12; was DBS403, a spec's DBS578 with `fused_projections`): the adapter's
rate with `rank_dropout_form = "lycoris"`, each kind's module on a fused Linear drawing one mask its parts
share (tests/runtime/test_lycoris_mixed_flow_rank_dropout.py holds the training forwards to lycoris-lora
4.1.3's modules on kohya's fused Linears). A full, IA^3, GLoRA (outside bypass_mode) or DyLoRA network's too
(was DBS403 from the converter): the adapter's rate, its entries drawing it (a DyLoRA one's with train_norm
its CLIP NormModules too: the adapter's `norm_rank_dropout`, was DBS403), and with `dora_wd` per output row
(was DBS403); per input column it stays refused; beside LoKr entries it is DBS402, as on SD (their
LokrModules' CPU mask stops kohya on a GPU)."""

from __future__ import annotations

from convert_kit import FLUX_LYCORIS, codes, component_file, errors, flux_lycoris, images, kohya, plan_of

PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "diag-oft"
[name_algo_map."single_blocks.*.linear1"]
algo = "full"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "OTHER"
dim = 2
alpha = 1
[name_algo_map.img_in]
algo = "ia3"
"""
BASE = [
    "model.base=builtin:tiny-flux",
    "model.text_encoder_files=[]",
    'model.vae=""',
    "model.t5_max_length=16",
]


def test_rank_dropout_beside_other_kinds_on_fused_layers(tmp_path):
    for algo, other in (("locon", "loha"), ("loha", "locon")):
        folder = tmp_path / algo
        folder.mkdir()
        (folder / "mixed.toml").write_text(PRESET.replace("OTHER", other), encoding="utf-8")
        outcome = flux_lycoris(folder, f'"algo={algo}" "preset=mixed.toml" "rank_dropout=0.25"')
        plan = plan_of(outcome, folder, BASE)
        a = plan.adapter
        assert (a.kind, a.rank_dropout, a.rank_dropout_form) == (
            {"locon": "lora"}.get(algo, algo),
            0.25,
            "lycoris",
        )
        assert a.fused and {b.kind for b in a.blocks} >= {"diag-oft", "full", "ia3"}


def test_whole_and_other_networks_rank_dropout_beside_entries_on_fused_layers(tmp_path):
    """The network's own modules draw FullModule's mask (full) or none (IA3Module; GLoRAModule outside
    bypass_mode; DyLoraModule): the adapter's rank_dropout, LoConModule's row masks where LoCon entries are
    (rank_dropout_form "lycoris"), was DBS403."""
    for algo, other, extra in (
        ("full", "loha", ""),
        ("ia3", "locon", ""),
        ("glora", "loha", ""),
        ("dylora", "locon", ' "block_size=2"'),
    ):
        folder = tmp_path / algo
        folder.mkdir()
        (folder / "mixed.toml").write_text(PRESET.replace("OTHER", other), encoding="utf-8")
        outcome = flux_lycoris(folder, f'"algo={algo}" "preset=mixed.toml" "rank_dropout=0.25"{extra}')
        a = plan_of(outcome, folder, BASE).adapter
        assert (a.kind, a.rank_dropout) == (algo, 0.25) and a.fused
        assert a.rank_dropout_form == ("lycoris" if other == "locon" else "kohya"), algo
        assert {b.kind for b in a.blocks} >= {"diag-oft", {"locon": "lora"}.get(other, other)}


def _refused(tmp_path, args: str, other: str = "loha", code: str = "DBS403") -> list[str]:
    (tmp_path / "mixed.toml").write_text(PRESET.replace("OTHER", other), encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(tmp_path, command=f'{FLUX_LYCORIS}--network_args "preset=mixed.toml" {args}')
    assert code in codes(outcome), errors(outcome)
    return [e for e in errors(outcome) if "rank_dropout" in e and e.startswith(code)]


def test_rank_dropout_beside_lokr_entries_on_fused_layers_is_refused(tmp_path):
    """Beside LoKr entries DBS402 with SD's message (was DBS403; network.lokr_entries_rank_dropout: their
    LokrModules' CPU mask stops kohya at the first step on a GPU). (A fused layer decomposed per input column
    beside other kinds converts now: test_dora_beside_other_kinds_on_fused_layers.)"""
    for name, args, other, code in (
        ("lokr_full", '"algo=full" "rank_dropout=0.25"', "lokr", "DBS402"),
        ("lokr_glora", '"algo=glora" "rank_dropout=0.25"', "lokr", "DBS402"),
        ("lokr_locon", '"algo=locon" "rank_dropout=0.25"', "lokr", "DBS402"),
        ("lokr_loha", '"algo=loha" "rank_dropout=0.25"', "lokr", "DBS402"),
    ):
        (tmp_path / name).mkdir()
        assert _refused(tmp_path / name, args, other, code), name


def test_dylora_network_with_train_norm_rank_dropout_beside_entries(tmp_path):
    """A DyLoRA network's rank_dropout with train_norm reaching CLIP-L's LayerNorms (was DBS403): the
    adapter's rank_dropout (its entries') and norm_rank_dropout (the NormModules'), the same rate, as on SD
    (tests/runtime/test_lycoris_flow_rank_dropout_layers.py holds both to lycoris-lora's modules)."""
    preset = PRESET.replace('["CLIPAttention"]', '["CLIPEncoderLayer"]').replace("OTHER", "locon")
    (tmp_path / "mixed.toml").write_text(preset, encoding="utf-8")
    args = '"algo=dylora" "preset=mixed.toml" "rank_dropout=0.25" "block_size=2" "train_norm=True"'
    a = plan_of(flux_lycoris(tmp_path, args), tmp_path, BASE).adapter
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout) == ("dylora", 0.25, 0.25)
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and a.fused


def test_dora_beside_other_kinds_on_fused_layers(tmp_path):
    """A LoCon / LoHa network's dora_wd with rank_dropout beside other kinds on the fused Linears (was DBS403,
    a spec's DBS578): the adapter's dora and rank_dropout, each part decomposing its rows of its fused
    module's masked update; per input column (wd_on_output=False, was DBS403 too) the parts' one magnitude
    renormalising by the column norms of every part's masked rows
    (tests/runtime/test_lycoris_flow_rank_dropout_layers.py)."""
    for algo, other, axis in (
        ("locon", "loha", "output"),
        ("loha", "locon", "output"),
        ("locon", "loha", "input"),
    ):
        folder = tmp_path / f"{algo}-{axis}"
        folder.mkdir()
        (folder / "mixed.toml").write_text(PRESET.replace("OTHER", other), encoding="utf-8")
        args = f'"algo={algo}" "preset=mixed.toml" "rank_dropout=0.25" "dora_wd=True"'
        args += ' "wd_on_output=False"' if axis == "input" else ""
        a = plan_of(flux_lycoris(folder, args), folder, BASE).adapter
        assert (a.dora, a.dora_axis, a.rank_dropout, a.rank_dropout_form) == (True, axis, 0.25, "lycoris")
        assert a.fused
