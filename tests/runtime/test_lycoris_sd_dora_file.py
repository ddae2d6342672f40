"""lycoris.kohya --network_weights with a LyCORIS LoCon file made with dora_wd (each module's `lora_down`,
`lora_up`, `alpha` and `dora_scale`) on SD 1.x (issue 12; runtime/init_weights.py, lycoris_dora.py):
lycoris-lora 4.1.3's LoConModules with weight_decompose over a preset file on the tiny U-Net and CLIP, every
parameter (dora_scale included) moved at random, saved as its network saves them (some modules left out).
kohya's steps, create_network (algo=locon, dora_wd=True, the same dims, alphas and preset), apply_to,
load_weights (`load_state_dict(strict=False)`: dora_scale loads as it is, LoConModule's load hook only resets
its scalar; a module the file lacks keeps its init, dora_scale the base weight's norms) and dbspec's converted
run start every layer alike, plain and in LoCon's Tucker form (use_tucker; outputs to 1e-5); a tiny run
from the file trains (one run per kind of layer started from such a file: the Tucker file's run trains its
plain linears beside its Tucker convolutions, the partial LoKr / LoHa files' theirs, and
test_dim_from_weights_locon_file_with_dora_scale_in_some_modules LoCon layers with and without their file's
dora_scale)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules

pytest.importorskip("lycoris.kohya")
ARGS = (
    '--network_dim=4 --network_alpha=1 --network_args "algo=locon" "preset=preset.toml" "conv_dim=4" '
    '"conv_alpha=2" "dora_wd=True"'
)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder, monkeypatch, tucker: str):
    return kit.network(
        pipe,
        folder,
        monkeypatch,
        algo="locon",
        conv_dim="4",
        conv_alpha="2",
        dora_wd="True",
        use_tucker=tucker,
    )


def _ours(comps) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return kit.kohya_layers(comps, LoraLayer, adapter=True)


@pytest.mark.parametrize("tucker", ["False", "True"])
def test_dora_file_starts_as_lycoris_loads_it_trains(pipe, tmp_path, monkeypatch, tucker):
    from dbspec.runtime.lycoris_dora import dora_scale_of

    path = kit.saved_file(_network(pipe, tmp_path, monkeypatch, tucker), tmp_path, seed=7, scale=0.1, drop=6)
    state = load_file(str(path))
    in_file = {k.split(".")[0] for k in state}
    assert any(k.endswith(".dora_scale") for k in state)
    made = _network(pipe, tmp_path, monkeypatch, tucker)
    assert set(made.load_weights(str(path))) == {"missing keys"}  # the left-out modules keep their init
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs)
    plan = kit.converted_plan(tmp_path, f'{ARGS} "use_tucker={tucker}"')
    assert plan.adapter.kind == "lora" and plan.adapter.dora and plan.adapter.dora_form == "lycoris"
    assert plan.adapter.tucker == (tucker == "True")
    assert any(k.endswith(".lora_mid.weight") for k in state) == plan.adapter.tucker
    assert plan.adapter.init_partial
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    for name, lyco in theirs.items():
        layer = ours[name]
        base = layer.get_base_layer()
        scale = dora_scale_of(layer, "default")
        assert scale is not None and lyco.wd, name
        if name in in_file:  # the file's dora_scale as it is (moved off the base weight's norms)
            torch.testing.assert_close(scale, state[name + ".dora_scale"], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(scale, lyco.dora_scale, rtol=0, atol=1e-6, msg=name)
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            if name in in_file:
                assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    if tucker == "False":  # started as above; the Tucker file's run trains such layers (its linears)
        return
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: k.endswith(".dora_scale")), "the run trained the magnitudes"


# algo -> create_network's extra arguments with dora_wd (strings, as kohya's network_args hand them)
PARTIAL = {"locon": {}, "lokr": {"factor": "4"}, "loha": {}}


@pytest.mark.parametrize("algo", sorted(PARTIAL))
def test_dora_wd_file_with_dora_scale_in_some_modules(pipe, tmp_path, monkeypatch, algo):
    """A dora_wd network (LoCon, LoKr, LoHa) from a file whose modules hold their factors but only some their
    `dora_scale` (CLIP's and the U-Net's alike, e.g. a file trained with per-entry weight_decompose):
    LyCORIS's load_state_dict(strict=False) loads the magnitudes present and leaves the others at the base
    weight's norms; dbspec's run starts every layer alike (magnitudes and outputs), and trains (LoKr, LoHa;
    LoCon's run from such a file: test_dim_from_weights_locon_file_with_dora_scale_in_some_modules)."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.lycoris_dora import dora_scale_of

    args = {"conv_dim": "4", "conv_alpha": "2", "dora_wd": "True", **PARTIAL[algo]}
    state = kit.moved_state(kit.network(pipe, tmp_path, monkeypatch, algo=algo, **args), 11, 0.1)
    names = sorted({k.split(".")[0] for k in state})
    bare = set(names[::3])  # every third module's dora_scale left out, CLIP's among them
    assert any(n.startswith("lora_te_") for n in bare) and any(n.startswith("lora_unet_") for n in bare)
    for name in bare:
        del state[f"{name}.dora_scale"]
    path = kit.save_state(state, tmp_path)
    made = kit.network(pipe, tmp_path, monkeypatch, algo=algo, **args)
    made.load_weights(str(path))
    theirs = _lycoris_modules(made)
    extra = " ".join(f'"{k}={v}"' for k, v in args.items())
    plan = kit.converted_plan(
        tmp_path,
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=preset.toml" {extra}',
    )
    assert plan.adapter.dora and plan.adapter.dora_form == "lycoris" and plan.adapter.init_partial
    comps, count = _loaded(plan)
    assert count == len(names)
    ours = kit.kohya_layers(comps, (LoraLayer, LoKrLayer, LoHaLayer), adapter=True)
    assert sorted(ours) == sorted(theirs) == names
    for name, lyco in theirs.items():
        layer = ours[name]
        base = layer.get_base_layer()
        scale = dora_scale_of(layer, "default")
        torch.testing.assert_close(scale, lyco.dora_scale, rtol=0, atol=1e-6, msg=name)
        if name not in bare:  # the file's, moved off the base weight's norms
            torch.testing.assert_close(scale, state[name + ".dora_scale"], rtol=0, atol=0, msg=name)
        else:  # LyCORIS's init: the base weight's norms per output row
            norms = base.weight.detach().flatten(1).norm(dim=1)
            torch.testing.assert_close(scale.flatten(), norms, rtol=1e-6, atol=1e-6, msg=name)
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
    if algo == "locon":  # started as above; LoCon layers with and without the file's dora_scale train in
        return  # test_dim_from_weights_locon_file_with_dora_scale_in_some_modules
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: k.endswith(".dora_scale")), "the run trained the magnitudes"


def test_dim_from_weights_locon_file_with_dora_scale_in_some_modules(pipe, tmp_path, monkeypatch):
    """--dim_from_weights (SD 1.x) with a LoCon file whose modules hold `dora_scale` in some modules only
    (CLIP's and the U-Net's, linears and 3x3 convolutions): lycoris-lora's create_network_from_weights
    builds those LoConModules alone with weight_decompose (make_module_from_state_dict), apply_to and
    load_weights load the file; dbspec's converted run (blocks' own dora; was DBS403) starts every layer
    alike (magnitudes the file's, outputs to 1e-5), and trains."""
    import copy

    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.lycoris_dora import dora_scale_of

    args = {"conv_dim": "4", "conv_alpha": "2", "dora_wd": "True"}
    state = kit.moved_state(kit.network(pipe, tmp_path, monkeypatch, algo="locon", **args), 13, 0.1)
    names = sorted({k.split(".")[0] for k in state})
    bare = set(names[::3])
    assert any(n.startswith("lora_te_") for n in bare) and any(n.startswith("lora_unet_") for n in bare)
    for name in bare:
        del state[f"{name}.dora_scale"]
    path = kit.save_state(state, tmp_path)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    unet = copy.deepcopy(pipe.unet)
    made, _ = kit.lycoris_kohya.create_network_from_weights(1.0, str(path), None, named, unet)
    made.apply_to(named, unet, True, True)
    made.load_weights(str(path))
    theirs = _lycoris_modules(made)
    assert sorted(theirs) == names
    assert {n for n, m in theirs.items() if m.wd} == set(names) - bare
    plan = kit.converted_plan(tmp_path, '--dim_from_weights --network_args "algo=locon"')
    a = plan.adapter
    assert (a.dora, a.dora_form, a.init_partial) == (False, "lycoris", True)
    assert any(b.dora == "on" for b in a.blocks) and any(b.dora == "on" for b in a.text_encoder_blocks)
    comps, count = _loaded(plan)
    assert count == len(names)
    ours = kit.kohya_layers(comps, LoraLayer, adapter=True)
    assert sorted(ours) == names
    for name, lyco in theirs.items():
        layer = ours[name]
        scale = dora_scale_of(layer, "default")
        assert (scale is not None) == (name not in bare), name
        if scale is not None:
            torch.testing.assert_close(scale, state[name + ".dora_scale"], rtol=0, atol=0, msg=name)
        x = kit.sample_input(layer.get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert {k.split(".")[0] for k in saved if k.endswith(".dora_scale")} == set(names) - bare
    assert kit.trained(saved, state, lambda k: k.endswith(".dora_scale")), "the run trained the magnitudes"
