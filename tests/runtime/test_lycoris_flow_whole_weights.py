"""lycoris.kohya --network_weights with algo=full / ia3 on Flux (issue 12; runtime/lycoris_whole_init.py):
lycoris-lora 4.1.3's FullModule / IA3Module on tiny-flux's layers as kohya's Flux holds them (fused q/k/v
stacked), every tensor random, saved as its network saves them; a converted kohya command starts from the
file, and each layer computes what LyCORIS's module loaded from it (load_state_dict(strict=False) after
apply_to, as its load_weights) computes; with `--dim_from_weights` what lycoris-lora's
create_network_from_weights, apply_to and load_weights (kohya's two steps: W + 2 diff) compute. (Training
and resuming a full / IA^3 run is test_lycoris_flux.py's and test_lycoris_flux_ia3.py's: a checkpoint,
not the file, restores a resumed run.)"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_flow_factor_file import RUN, _layers
from tests.runtime.test_lycoris_flux import BASE, _fused_linear

pytest.importorskip("lycoris.kohya")
from lycoris.modules.full import FullModule  # noqa: E402
from lycoris.modules.ia3 import IA3Module  # noqa: E402


def _file(tmp_path, cls):
    """LyCORIS's modules on the fused Linears, every tensor random: (their modules by name, the file)."""
    from dbspec.runtime.tiny import build_pipeline

    torch.manual_seed(7)
    tensors, modules = {}, {}
    for name, parts in _layers(build_pipeline(BASE).transformer.float()).items():
        module = cls(name, _fused_linear(parts), 1.0)
        module.apply_to()
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        modules[name] = module.eval()
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    return modules, file


def _converted(tmp_path, algo: str, extra: str = ""):
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
        "--ae ae.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f"--network_args algo={algo} preset=unet-only --network_weights prev.safetensors "
        "--learning_rate=1e-3 --max_train_steps=3 --save_model_as=safetensors "
        f"--output_dir=out --model_prediction_type raw --guidance_scale 1.0 {extra}",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return out_path(tmp_path)


def _completed(plan, file) -> int:
    """The file plus a zero `diff` / `diff_b` for each full layer of the run it lacks (LyCORIS's network
    from the preset has a FullModule there, whose load hook needs one): the run's layer count."""
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.lycoris_whole_init import whole_layer_slots
    from dbspec.runtime.prepare import configure_models

    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    slots = whole_layer_slots(plan, comps.unet, comps.text_encoders)
    tensors = load_file(str(file))
    for key, (own, _) in slots.items():
        for name, (shape, _copy) in own.items():
            tensors.setdefault(f"{key}.{name}", torch.zeros(shape))
    save_file(tensors, str(file))
    return len(slots)


def _kohya_from_weights(file) -> dict[str, torch.nn.Module]:
    """kohya's --dim_from_weights start: lycoris-lora's create_network_from_weights on the fused Linears
    (named as kohya's), apply_to, then train_network.py's load_weights of the same file."""
    from dbspec.runtime.tiny import build_pipeline
    from lycoris.kohya import create_network_from_weights

    tree = torch.nn.Module()
    for name, parts in _layers(build_pipeline(BASE).transformer.float()).items():
        tree.add_module(name.removeprefix("lora_unet_"), _fused_linear(parts))
    network, _ = create_network_from_weights(1.0, str(file), None, None, tree)
    network.apply_to(None, tree, apply_text_encoder=False, apply_unet=True)
    network.load_weights(str(file))
    return {f"lora_unet_{name}": layer for name, layer in tree.named_children()}


@pytest.mark.parametrize(
    ("algo", "cls", "from_weights"),
    [("full", FullModule, False), ("ia3", IA3Module, False), ("full", FullModule, True)],
)
def test_file_starts_where_lycoris_loads_it(tmp_path, algo, cls, from_weights):
    theirs, file = _file(tmp_path, cls)
    keys = {k.split(".", 1)[1] for k in load_file(str(file))}
    assert keys == ({"diff", "diff_b"} if algo == "full" else {"weight", "on_input"})
    if from_weights:  # kohya's two steps; every module of the file builds (img_in too)
        theirs = _kohya_from_weights(file)
        spec = _converted(tmp_path, algo, "--dim_from_weights")
    else:
        spec = _converted(tmp_path, algo)
    plan = compile_spec(spec, RUN)
    assert plan.adapter.kind == algo and plan.adapter.init_partial
    assert plan.adapter.init_scale == (2.0 if from_weights else 1.0)
    run_layers = 5
    if algo == "full" and not from_weights:  # FullModule's load hook pops every preset module's `diff`
        with pytest.raises(ValueError, match="KeyError"):
            _loaded(plan)
        run_layers = _completed(plan, file)
    comps, count = _loaded(plan)
    assert count == (6 if from_weights else run_layers)  # img_in: no layer of LyCORIS's preset (strict=False)
    torch.manual_seed(0)
    layers = _layers(comps.unet.float().eval())
    if not from_weights:
        assert not hasattr(layers.pop("lora_unet_img_in")[0], "base_layer")
    for name, parts in layers.items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
            assert not torch.allclose(ours, plain, atol=1e-4), name
            torch.testing.assert_close(ours, theirs[name](x), rtol=0, atol=1e-5)
