"""kohya lycoris.kohya `train_norm=True` with a preset file reaching CLIP's LayerNorms on Flux
(flux_train_network.py): LyCORIS's NormModule trains an offset of each LayerNorm's weight and bias
(`[adapter] text_encoder_norms`, runtime/norm_offsets.py). A tiny Flux run trains them, resumes bit-exact
and exports them as NormModule's `w_norm` / `b_norm`, which lycoris-lora 4.1.3's
create_network_from_weights loads onto the base CLIP-L (with the file's LoCon modules) to give the trained
encoder's outputs (issue 12), beside LoCon's modules and beside Full's (algo=full); `dbspec sample` loads
the offsets back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# Flux's attention (fused q/k/v) and every CLIP encoder layer: its Linears and both LayerNorms
PRESET = """\
unet_target_module = ["SelfAttention"]
unet_target_name = []
text_encoder_target_module = ["CLIPEncoderLayer"]
"""
# no CLIP Linear: two LayerNorms by name, whose NormModules alone make CLIP train
NORMS_ONLY = PRESET.replace(
    '["CLIPEncoderLayer"]',
    "[]\ntext_encoder_target_name = ['text_model\\.final_layer_norm', "
    "'text_model\\.encoder\\.layers\\.1\\.layer_norm2']",
)
# a DyLoRA network whose file gives Flux's attention LoCon entries: CLIP's DyLoRA modules beside its norms
DYLORA_ENTRIES = PRESET + '\n[module_algo_map.SelfAttention]\nalgo = "locon"\n'
BASE = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2"]
BASE += ['checkpoints.exports=["kohya_lora"]', "model.t5_max_length=16"]


# the algos whose runs also resume bit-exact (see test_clip_norm_offsets_train_resume_and_load_in_lycoris)
RESUMED = ("lora",)


def _resumes_bit_exact(spec: Path, whole, tensors: dict[str, torch.Tensor]) -> None:
    """The spec stopped after its first step and resumed: the whole run's losses and export bit for bit."""
    parts = compile_spec(spec, [*BASE, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    assert first.status == "interrupted"
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    (again,) = Path(second.final).glob("*.kohya.safetensors")
    resumed = load_file(str(again))
    assert tensors.keys() == resumed.keys() and all(torch.equal(tensors[k], resumed[k]) for k in tensors)


def _converted(tmp_path: Path, algo: str, preset: str, drops: str) -> Path:
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
        "--ae ae.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f"--network_dim={32 if algo == 'boft' else 4} --network_alpha=1 "  # BOFT: a block that splits CLIP-L
        f'--network_args "algo={algo}" "preset=p.toml" "train_norm=True" '
        f"{drops} "
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        "--model_prediction_type raw --guidance_scale 1.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return out_path(tmp_path)


@pytest.mark.parametrize(
    "algo, preset, drops, kinds, norms",
    [
        (
            "lora",
            PRESET,
            '"rank_dropout=0.5" "module_dropout=0.2"',
            {"LoConModule", "NormModule"},
            ("layer_norm1", "layer_norm2"),
        ),
        ("full", PRESET, "", {"FullModule", "NormModule"}, ("layer_norm1", "layer_norm2")),
        ("ia3", PRESET, "", {"NormModule"}, ("layer_norm1", "layer_norm2")),
        ("diag-oft", PRESET, "", {"DiagOFTModule", "NormModule"}, ("layer_norm1", "layer_norm2")),
        (  # rank_dropout: ButterflyOFTModule never reads it, the offsets' alone (norm_rank_dropout)
            "boft",
            PRESET,
            '"module_dropout=0.2" "rank_dropout=0.5"',
            {"ButterflyOFTModule", "NormModule"},
            ("layer_norm1", "layer_norm2"),
        ),
        (  # outside bypass_mode GLoRAModule never reads rank_dropout: the offsets' alone
            "glora",
            PRESET,
            '"module_dropout=0.2" "rank_dropout=0.5"',
            {"GLoRAModule", "NormModule"},
            ("layer_norm1", "layer_norm2"),
        ),
        (  # DyloraModule never reads rank_dropout: the offsets' alone
            "dylora",
            PRESET,
            '"module_dropout=0.2" "rank_dropout=0.5"',
            {"LoConModule", "NormModule"},
            ("layer_norm1", "layer_norm2"),
        ),
        ("dylora", DYLORA_ENTRIES, "", {"LoConModule", "NormModule"}, ("layer_norm1", "layer_norm2")),
        ("lora", NORMS_ONLY, "", {"NormModule"}, ("layers.1.layer_norm2", "final_layer_norm")),
    ],
)
def test_clip_norm_offsets_train_resume_and_load_in_lycoris(tmp_path, algo, preset, drops, kinds, norms):
    """NormModules beside LoCon's, with LyCORIS's dropouts (NormModule's draws: test_norm_offsets_draw_as_
    lycoris), beside Full's (LyCORIS gives the norms theirs whatever the algo), and alone (CLIP trains its
    norm offsets without an adapter). The LoCon runs resume bit-exact (RESUMED: the offsets and their
    dropout draws beside an adapter, and the offsets alone); the other algos' runs save the same offsets
    through the same path, their own kinds' state resuming in their own tests (test_lycoris,
    test_lycoris_flux_boft, test_lycoris_flux_glora, test_lycoris_flux_oft, test_lycoris_flux_ia3,
    test_lycoris_flux_dylora, test_lycoris_flow_full_t5): they train, export and load back."""
    spec = _converted(tmp_path, algo, preset, drops)
    plan = compile_spec(spec, [*BASE, "output.dir=whole"])
    assert plan.adapter.text_encoder_norms == norms and plan.train_text_encoder
    assert plan.adapter.norm_rank_dropout == (0.5 if "rank_dropout" in drops else 0.0)
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    if algo in RESUMED:
        _resumes_bit_exact(spec, whole, tensors)
    offsets = {k for k in tensors if k.endswith(("w_norm", "b_norm"))}
    assert "lora_te1_text_model_encoder_layers_1_layer_norm2.w_norm" in offsets
    assert all(tensors[k].abs().max() > 0 for k in offsets)  # trained away from LyCORIS's zeros
    assert (Path(whole.final) / "text_encoder_norms.safetensors").is_file()

    # lycoris-lora's loader on the base CLIP-L: its LoCon and Norm modules give the trained encoder's output
    from peft.tuners.tuners_utils import BaseTunerLayer

    if algo == "ia3":  # lycoris-lora 4.1.3's loader raises on IA3 modules (TypeError in its
        # make_module_from_state_dict call): the export's NormModules alone, against the trained encoder with
        # its IA3 adapters off (IA3 on CLIP is checked against IA3Module elsewhere)
        export = tmp_path / "norms_only.safetensors"
        save_file({k: v for k, v in tensors.items() if k in offsets}, str(export))
        for layer in whole.components.text_encoders[0].modules():
            if isinstance(layer, BaseTunerLayer):
                layer.enable_adapters(False)
    clip = build_pipeline("builtin:tiny-flux").text_encoder.float()
    named = torch.nn.Module()
    named.text_model = clip  # kohya's CLIP names its modules text_model.* (this transformers drops it)
    encoders = [named, torch.nn.Module()]  # kohya's list (CLIP-L, T5-XXL): CLIP-L's modules are lora_te1_*
    network, weights = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, encoders, torch.nn.Module(), for_inference=True
    )
    assert {type(m).__name__ for m in network.text_encoder_loras} == kinds
    ids = torch.arange(7).unsqueeze(0) % clip.config.vocab_size
    with torch.no_grad():
        plain = clip.eval()(ids).last_hidden_state
    network.apply_to(encoders, torch.nn.Module(), apply_text_encoder=True, apply_unet=False)
    if algo != "full":  # kohya's loading; FullModule's were built from the file already, and its load
        network.load_state_dict(weights, strict=False)  # prehook would add the diff a second time
    trained = whole.components.text_encoders[0].float().eval()
    with torch.no_grad():
        ours = trained(ids).last_hidden_state
        theirs = clip.eval()(ids).last_hidden_state
    assert (ours - plain).abs().max() > (1e-3 if algo == "ia3" else 1e-2)  # the trained encoder differs
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)

    # `dbspec sample` on the run's folder loads the offsets back (text_encoder_norms.safetensors); compared
    # with the adapters off on both, the offsets alone
    from dbspec.runtime.norm_offsets import norm_layers
    from dbspec.runtime.sample import SampleRequest, load_pipeline

    sampled = load_pipeline(SampleRequest(source=Path(whole.output), settings=None)).text_encoder.float()
    assert len(norm_layers(sampled)) == len(norm_layers(trained)) > 0
    for model in (sampled, trained):
        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.enable_adapters(False)
    with torch.no_grad():
        norms_alone = trained(ids).last_hidden_state
        assert (norms_alone - plain).abs().max() > 1e-3
        torch.testing.assert_close(sampled.eval()(ids).last_hidden_state, norms_alone, rtol=0, atol=1e-5)


def test_norm_offsets_draw_as_lycoris():
    """With LyCORIS's module_dropout / rank_dropout, the offsets draw what NormModule.forward draws from the
    same generator state (a skip from a CPU `torch.rand(1)`, then `torch.rand(dim) < rank_dropout` keeping
    the offsets it marks): equal outputs, and the generator left where LyCORIS leaves it."""
    import copy

    from lycoris.modules.norms import NormModule

    from dbspec.runtime.norm_offsets import BIAS, WEIGHT, add_norm_offsets

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 16), torch.nn.LayerNorm(16))
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    add_norm_offsets(ours, ("0", "2"), 0.4, 0.3)
    modules = []
    for i in (0, 2):
        w, b = torch.randn(16), torch.randn(16)
        getattr(ours[i], WEIGHT).data.copy_(w)
        getattr(ours[i], BIAS).data.copy_(b)
        module = NormModule(f"n{i}", theirs[i], 1.0, rank_dropout=0.3, module_dropout=0.4)
        module.w_norm.data.copy_(w)
        module.b_norm.data.copy_(b)
        module.apply_to()
        modules.append(module.train())
    for step in range(12):
        x = torch.randn(3, 16)
        torch.manual_seed(step)
        out, after = ours(x), torch.rand(1)
        torch.manual_seed(step)
        torch.testing.assert_close(out, theirs(x), rtol=0, atol=1e-6)
        assert torch.equal(after, torch.rand(1))


def test_t5_norms_stay_as_lycoris_leaves_them(tmp_path):
    """A file reaching CLIP's encoder layers and T5-XXL's blocks: lycoris-lora 4.1.3's create_network over
    tiny-flux's [CLIP-L, T5-XXL] gives T5's T5LayerNorms NormModules that are "not supported" (no `_norm`):
    no parameter, apply_to leaves the layer's forward, nothing saved; the NormModules it trains are exactly
    the CLIP LayerNorms the converted plan offsets. The run (CLIP's offsets, T5's LoRA, T5's norms as they
    are) trains, resumes bit-exact and exports no T5 norm tensor."""
    preset = PRESET.replace('["CLIPEncoderLayer"]', '["CLIPEncoderLayer", "T5Block"]')
    spec = _converted(tmp_path, "lora", preset, "")
    plan = compile_spec(spec, [*BASE, "output.dir=whole"])
    assert plan.adapter.text_encoder_norms == ("layer_norm1", "layer_norm2") and plan.adapter.t5_targets

    pipe = build_pipeline("builtin:tiny-flux")
    clip, t5 = pipe.text_encoder.float(), pipe.text_encoder_2.float()
    named = torch.nn.Module()
    named.text_model = clip  # kohya's CLIP names its modules text_model.* (this transformers drops it)
    network = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [named, t5], torch.nn.Module(), preset=str(tmp_path / "p.toml"), train_norm="True"
    )
    norms = [m for m in network.text_encoder_loras if type(m).__name__ == "NormModule"]
    on_t5 = [m for m in norms if m.lora_name.startswith("lora_te2_")]
    t5_norms = [p for p, m in t5.named_modules() if type(m).__name__ == "T5LayerNorm"]
    assert len(on_t5) == len(t5_norms) - 1  # every block's, not the final one (outside T5Block)
    assert all(m.not_supported and not list(m.parameters()) for m in on_t5)
    offset = {m.lora_name for m in norms if list(m.parameters())}
    planned = {
        f"lora_te1_text_model_{path.replace('.', '_')}"
        for path, layer in clip.named_modules()
        if isinstance(layer, torch.nn.LayerNorm) and path.endswith(plan.adapter.text_encoder_norms)
    }
    assert offset == planned and all(m.lora_name.startswith("lora_te1_") for m in norms if m not in on_t5)
    ids = torch.arange(7).unsqueeze(0) % t5.config.vocab_size
    with torch.no_grad():
        before = t5.eval()(ids).last_hidden_state
        network.apply_to([named, t5], torch.nn.Module(), apply_text_encoder=True, apply_unet=False)
        for module in on_t5:  # LyCORIS leaves the T5LayerNorm's forward
            assert not hasattr(module.org_module[0], "_lycoris_wrappers")
        torch.testing.assert_close(t5(ids).last_hidden_state, before, rtol=0, atol=0)  # LoCon ups start at 0
    assert not any(k.startswith("lora_te2_") and k.endswith("_norm") for k in network.state_dict())

    whole = execute(plan)  # resumes: its CLIP offsets in the LoCon runs above, T5's LoRA in
    # test_flux_t5_lora's test_t5_lora_trains_resumes_bit_exact_and_exports_kohya_names
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    assert any(k.startswith("lora_te2_") for k in tensors)  # T5's Linears trained
    assert not any(k.startswith("lora_te2_") and k.endswith("_norm") for k in tensors)
    assert any(k.startswith("lora_te1_") and k.endswith("w_norm") for k in tensors)
