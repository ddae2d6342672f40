"""lycoris.kohya --network_weights --dim_from_weights on Flux with a full file (`diff` / `diff_b`) holding
Flux's final layer without the single block's linear2 and T5-XXL modules (issue 12;
dbspec/convert/kohya/lycoris_flow_factor_file.py _full_file): lycoris-lora 4.1.3 writes the file (its
FullModule on tiny-flux's layers as kohya's Flux holds them, fused q/k/v stacked, and on T5's bias-less
Linears, every copy random) and kohya's two steps rebuild it (create_network_from_weights on [CLIP-L,
T5-XXL] and kohya's tree, apply_to, load_weights: W + 2 diff). The converted spec (train.t5 full copies, the
layers the file lacks `exclude`d) starts every layer where LyCORIS's are, leaves the others untouched, trains
and resumes bit-exact, and its export loads back in lycoris-lora with the trained outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_flow_factor_file import RUN, _layers, _tree
from tests.runtime.test_lycoris_flux import BASE, _fused_linear

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.modules.full import FullModule  # noqa: E402

# T5's Linears the file holds: block 0's attention and block 1's first gated-MLP input (the rest excluded)
T5_HELD = (
    "encoder.block.0.layer.0.SelfAttention.q",
    "encoder.block.0.layer.0.SelfAttention.k",
    "encoder.block.0.layer.0.SelfAttention.v",
    "encoder.block.0.layer.0.SelfAttention.o",
    "encoder.block.1.layer.1.DenseReluDense.wi_0",
)


def _module(name: str, layer: nn.Module) -> dict[str, torch.Tensor]:
    """FullModule's saved tensors for a random trained copy of `layer` (a copy: apply_to takes its weight)."""
    module = FullModule(name, copy.deepcopy(layer), 1.0)
    module.apply_to()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}


def _file(tmp_path: Path, pipe) -> Path:
    torch.manual_seed(3)
    tensors: dict[str, torch.Tensor] = {}
    for name, parts in _layers(pipe.transformer, final=True).items():
        tensors |= _module(name, _fused_linear(parts))
    t5 = dict(pipe.text_encoder_2.named_modules())
    for path in T5_HELD:
        tensors |= _module("lora_te2_" + path.replace(".", "_"), t5[path])
    assert not any(k.startswith("lora_te2_") and k.endswith("diff_b") for k in tensors)  # T5: no bias
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    return file


def _converted(tmp_path: Path) -> Path:
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
        "--ae ae.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_args algo=full --network_weights prev.safetensors --dim_from_weights "
        "--learning_rate=1e-3 --max_train_steps=2 --save_model_as=safetensors "
        "--output_dir=out --model_prediction_type raw --guidance_scale 1.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return out_path(tmp_path)


def test_full_file_with_t5_and_final_layer_starts_where_lycoris_rebuilds_it(tmp_path):
    from dbspec.runtime.tiny import build_pipeline

    pipe = build_pipeline(BASE)
    pipe.transformer.float()
    pipe.text_encoder_2.float()
    file = _file(tmp_path, pipe)
    # kohya's two steps on its tree and encoder list [CLIP-L, T5-XXL] (no CLIP module in the file)
    linears = {name: _fused_linear(parts) for name, parts in _layers(pipe.transformer, final=True).items()}
    tree, t5 = _tree(linears), copy.deepcopy(pipe.text_encoder_2)
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(file), None, [nn.Module(), t5], tree)
    assert len(network.text_encoder_loras) == len(T5_HELD)
    network.apply_to([nn.Module(), t5], tree, apply_text_encoder=True, apply_unet=True)
    network.load_weights(str(file))

    spec = _converted(tmp_path)
    plan = compile_spec(spec, [*RUN, "output.dir=whole", 'checkpoints.exports=["kohya_lora"]'])
    assert plan.adapter.kind == "full" and plan.adapter.init_scale == 2.0 and plan.adapter.t5_targets
    comps, count = _loaded(plan)
    assert count == len(linears) + len(T5_HELD)
    unet, ours_t5 = comps.unet.float().eval(), comps.text_encoders[1].float().eval()
    # the layers the file lacks: no trained copy (the single block's linear2, T5's other Linears)
    assert not hasattr(unet.single_transformer_blocks[0].proj_out, "base_layer")
    adapted = {p for p, m in ours_t5.named_modules() if hasattr(m, "base_layer")}
    assert adapted == set(T5_HELD)
    torch.manual_seed(0)
    pairs = [
        (parts, linears[name]) for name, parts in _layers(unet, final=True).items()
    ]  # kohya's fused Linear, now LyCORIS's FullModule's forward
    t5_layers, theirs_t5 = dict(ours_t5.named_modules()), dict(t5.named_modules())
    pairs += [((t5_layers[p],), theirs_t5[p]) for p in T5_HELD]
    for parts, theirs in pairs:
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
            assert not torch.allclose(ours, plain, atol=1e-4)
            torch.testing.assert_close(ours, theirs(x), rtol=0, atol=1e-5)

    # a tiny run trains and resumes bit-exact; its export's T5 copies load in lycoris-lora with the outputs
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    parts_plan = compile_spec(spec, [*RUN, "output.dir=parts", 'checkpoints.exports=["kohya_lora"]'])
    first = execute(parts_plan, stop_after=1)
    assert first.status == "interrupted"
    second = execute(parts_plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    (again,) = Path(second.final).glob("*.kohya.safetensors")
    tensors, resumed = load_file(str(export)), load_file(str(again))
    assert tensors.keys() == resumed.keys() and all(torch.equal(tensors[k], resumed[k]) for k in tensors)
    t5_keys = {k for k in tensors if k.startswith("lora_te2_")}
    assert t5_keys == {"lora_te2_" + p.replace(".", "_") + ".diff" for p in T5_HELD}
    assert not any("single_blocks_0_linear2" in k for k in tensors)
    base_t5 = build_pipeline(BASE).text_encoder_2.float().eval()
    loaded, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, [nn.Module(), base_t5], nn.Module(), for_inference=True
    )
    loaded.apply_to([nn.Module(), base_t5], nn.Module(), apply_text_encoder=True, apply_unet=False)
    trained = whole.components.text_encoders[1].float().eval()
    ids = torch.arange(9).unsqueeze(0) % base_t5.config.vocab_size
    with torch.no_grad():
        plain = build_pipeline(BASE).text_encoder_2.float().eval()(ids).last_hidden_state
        ours = trained(ids).last_hidden_state
        theirs = base_t5(ids).last_hidden_state
    assert (ours - plain).abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


def test_full_preset_file_copies_what_lycoris_builds(tmp_path):
    """algo=full with a preset file naming Flux's final layer and T5-XXL's attention (`T5Attention`):
    lycoris-lora 4.1.3's create_network over tiny-flux's T5 builds FullModules on exactly the T5 Linears
    dbspec's run copies (train.t5, the gated-MLP ones excluded), and the run copies the final layer but not
    the single block's linear2 (its `proj_out`, which the target `proj_out` would take). With
    `--network_weights` (no --dim_from_weights: the preset's FullModules, apply_to, load_weights' W + diff)
    each T5 copy starts where LyCORIS's does."""
    from dbspec.runtime.tiny import build_pipeline
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    preset = tmp_path / "p.toml"
    preset.write_text(
        'unet_target_module = []\nunet_target_name = ["final_layer.linear"]\n'
        'text_encoder_target_module = ["T5Attention"]\n'
    )
    # the file: kohya's network from the preset, every copy moved (its final layer's too: the load hook
    # needs each module's diff), saved as LyCORIS saves it
    pipe = build_pipeline(BASE)
    torch.manual_seed(4)
    tensors = _module("lora_unet_final_layer_linear", pipe.transformer.proj_out.float())
    source = copy.deepcopy(pipe.text_encoder_2).float()
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [nn.Module(), source], nn.Module(), preset=str(preset), algo="full"
    )
    made.apply_to([nn.Module(), source], nn.Module(), apply_text_encoder=True, apply_unet=False)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tensors |= {k: v.contiguous() for k, v in made.state_dict().items()}
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
        "--ae ae.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_args algo=full preset=p.toml --network_weights prev.safetensors "
        "--learning_rate=1e-3 --max_train_steps=2 "
        "--save_model_as=safetensors --output_dir=out --model_prediction_type raw --guidance_scale 1.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = compile_spec(out_path(tmp_path), RUN)
    t5 = build_pipeline(BASE).text_encoder_2.float()
    network = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [nn.Module(), t5], nn.Module(), preset=str(preset), algo="full"
    )
    theirs = {m.lora_name for m in network.text_encoder_loras}
    assert {type(m).__name__ for m in network.text_encoder_loras} == {"FullModule"}
    assert plan.adapter.init_scale == 1.0 and plan.adapter.init_partial
    comps, count = _loaded(plan)
    assert count == 1 + 8
    ours = {p for p, m in comps.text_encoders[1].named_modules() if hasattr(m, "lora_full")}
    assert {"lora_te2_" + p.replace(".", "_") for p in ours} == theirs and len(theirs) == 8
    unet = comps.unet
    assert hasattr(unet.proj_out, "lora_full")
    assert not hasattr(unet.single_transformer_blocks[0].proj_out, "lora_full")
    # kohya's start: the preset's FullModules applied, then load_weights' hook adds the file's diff
    network.apply_to([nn.Module(), t5], nn.Module(), apply_text_encoder=True, apply_unet=False)
    network.load_weights(str(tmp_path / "prev.safetensors"))
    t5_ours, t5_theirs = dict(comps.text_encoders[1].float().eval().named_modules()), dict(t5.named_modules())
    torch.manual_seed(0)
    for path in ours:
        x = torch.randn(3, t5_ours[path].base_layer.in_features)
        with torch.no_grad():
            assert not torch.allclose(t5_ours[path](x), t5_ours[path].base_layer(x), atol=1e-4), path
            torch.testing.assert_close(t5_ours[path](x), t5_theirs[path](x), rtol=0, atol=1e-5)
