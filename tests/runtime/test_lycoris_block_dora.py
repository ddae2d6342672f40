"""A LyCORIS preset file's map entries with their own `weight_decompose` (issue 12): lycoris-lora 4.1.3's
create_single_module hands an entry's keys over the network's, so LoConModule / LohaModule / LokrModule give
those layers alone LyCORIS's weight decomposition (a `dora_scale` at the base weight's norms), or take it away
from them on a `dora_wd` network. dbspec converts such an entry to its block's `dora` (runtime/blocks.py
block_doras, runtime/lycoris_dora.py on those layers only). Checked against lycoris-lora's network built from
the same file: the layers holding a `dora_scale` and its shape; a tiny run resumes bit-exact, its export
carries `dora_scale` exactly where LyCORIS's modules do and loads into them (strict) with each module's
decomposed weight the trained layer's merged one, and its adapter folders load back."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import (
    PRESETS,
    _converted_plan,
    _loaded_weights_are_trained,
    _lycoris,
    _resumes_and_loads_back,
    pipe,  # noqa: F401 (a fixture: the tiny SD 1.x, once per module)
)

pytest.importorskip("lycoris.kohya")

# the ResNets (their 3x3 convolutions and time projections) and CLIP's MLP decomposed, the rest not; on a
# dora_wd network (`off`) the transformers' MLP without
ENTRIES = {
    "on": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
weight_decompose = true
[module_algo_map.CLIPMLP]
dim = 2
weight_decompose = "yes"
""",
    "off": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]
text_encoder_target_name = []

[module_algo_map.FeedForward]
weight_decompose = false
""",
    # entries' own wd_on_out (issue 12), tested for truth: on a dora_wd LoCon (per output row) the ResNets
    # per input column and CLIP's MLP ("": false) too; the transformers keep the network's rows
    "axis": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
wd_on_out = false
[module_algo_map.CLIPMLP]
wd_on_out = ""
""",
    # on a LoHa network per input column (wd_on_output=False) without dora_wd: the ResNets' own
    # weight_decompose per output row (their wd_on_out "false" is true), the transformers' MLP's per column
    "axis_own": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
weight_decompose = true
wd_on_out = "false"
[module_algo_map.FeedForward]
weight_decompose = true
""",
}


def _decomposed(made) -> dict[str, list[int]]:
    """{LyCORIS module name: its dora_scale's shape} of the modules with weight_decompose."""
    return {
        m.lora_name: list(m.dora_scale.shape)
        for m in [*made.unet_loras, *made.text_encoder_loras]
        if getattr(m, "wd", False)
    }


def _ours(components) -> dict[str, list[int]]:
    out = {}
    for prefix, model, path in (
        ("lora_unet_", components.unet, lambda n: n),
        ("lora_te_", components.text_encoders[0], lambda n: f"text_model.{n}"),
    ):
        for name, layer in model.named_modules():
            scale = dora_scale_of(layer, "default")
            if scale is not None:
                out[prefix + path(name).replace(".", "_")] = list(scale.shape)
    return out


# one resume per kind of saved dora_scale (docs/development.md, "Checks outside the suite"): the LoHa
# entries' here; LoCon's and LoKr's decomposed beside undecomposed LoHa entries on a dora_wd LoKr network
# resume in test_lycoris_algo_maps' test_mixed_algorithms_train_resume_and_load_in_lycoris[lokr] (the `off`
# case's state); the per-column variants save the same tensor through the same path
RESUMED = (("loha", "on"),)


@pytest.mark.parametrize(
    "algo, entries, args, doras, axes",
    [
        ("locon", "on", "", {"on"}, {"adapter"}),
        ("loha", "on", "wd_on_output=False", {"on"}, {"adapter"}),
        ("lokr", "off", "dora_wd=True", {"off"}, {"adapter"}),
        ("locon", "axis", "dora_wd=True", {"adapter"}, {"input"}),
        ("loha", "axis_own", "wd_on_output=False", {"on"}, {"output", "adapter"}),
    ],
)
def test_entry_weight_decompose_trains_resumes_and_loads_as_lycoris(
    pipe,  # noqa: F811
    algo,
    entries,
    args,
    doras,
    axes,
    tmp_path,
    monkeypatch,
):
    from tests.unit.convert_kit import out_path

    PRESETS[entries] = ENTRIES[entries]
    try:
        path, plan = _converted_plan(tmp_path, entries, algo, f'"{args}"' if args else "")
    finally:
        del PRESETS[entries]
    a = plan.adapter
    blocks = [*a.blocks, *a.text_encoder_blocks]
    assert a.dora == ("dora_wd" in args) and a.dora_form == "lycoris"
    assert a.dora_axis == ("input" if "wd_on_output" in args else "output")
    assert {b.dora for b in blocks} == doras and {b.dora_axis for b in blocks} == axes
    extra = dict(kv.split("=") for kv in args.split()) if args else {}
    made = _lycoris(pipe, path, monkeypatch, algo, **extra)
    theirs = _decomposed(made)
    everything = {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras]}
    if entries == "axis":  # every layer decomposed, some per input column, others per output row
        assert set(theirs) == everything
        assert {shape[0] == 1 for shape in theirs.values()} == {True, False}
    else:
        assert theirs and set(theirs) != everything  # some layers decomposed, others not
    done = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1"]), keep_models=True)
    assert done.status == "finished"
    assert _ours(done.components) == theirs  # the same layers, each dora_scale in LyCORIS's shape
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        ours = {key: handle.get_tensor(key) for key in handle.keys()}
    saved = {
        f"{m.lora_name}.{k}": v
        for m in [*made.unet_loras, *made.text_encoder_loras]
        for k, v in m.state_dict().items()
    }
    assert sorted(ours) == sorted(saved)
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in saved.items()}
    trained = [k for k in ours if k.endswith("dora_scale") and not torch.equal(ours[k], saved[k])]
    assert trained, "the magnitudes trained"
    _resumes_and_loads_back(tmp_path, done, ours, resume=(algo, entries) in RESUMED)
    fresh = build_pipeline("builtin:tiny-sd1")  # lycoris-lora's modules from the same file take the export
    named = nn.Module()
    named.text_model = fresh.text_encoder
    made.apply_to(named, fresh.unet, apply_text_encoder=True, apply_unet=True)
    made.load_state_dict(ours, strict=True)
    _loaded_weights_are_trained(made, done.components)


# --network_weights (SD 1.x): LyCORIS's network over the same preset file, every tensor moved at random (the
# ResNets' dora_scale too), saved; kohya's create_network, apply_to and load_weights (strict=False)
WEIGHTS_PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
weight_decompose = true
"""
# the entry's own wd_on_out too: the ResNets' dora_scale per input column (issue 12; was DBS583 / DBS403)
WEIGHTS_PRESET_AXIS = WEIGHTS_PRESET + "wd_on_out = false\n"
# on a LoCon network the ResNets LoHa and the transformers' MLPs LoKr, both decomposed, and CLIP's attention
# LoCon decomposed beside the U-Net's attention LoCon not: a run of several kinds (issue 12; was DBS403)
WEIGHTS_PRESET_MIXED = WEIGHTS_PRESET.replace(
    "[module_algo_map.ResnetBlock2D]\n", '[module_algo_map.ResnetBlock2D]\nalgo = "loha"\n'
) + (
    '[module_algo_map.FeedForward]\nalgo = "lokr"\nweight_decompose = true\n'
    "[module_algo_map.CLIPAttention]\nweight_decompose = true\n"
)


def _weights_network(pipe, folder: Path, monkeypatch, algo: str):  # noqa: F811 (the fixture's value)
    import copy

    from lycoris import kohya as lycoris_kohya

    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    unet = copy.deepcopy(pipe.unet)
    preset = str(folder / "preset.toml")
    extra = {"factor": "4"} if algo == "lokr" else {}
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo=algo, preset=preset, conv_dim="4", conv_alpha="2", **extra
    )
    made.apply_to(named, unet, True, True)
    return made


@pytest.mark.parametrize(
    "algo, axis",
    [("lokr", "output"), ("loha", "output"), ("locon", "output"), ("lokr", "input"), ("loha", "input")]
    + [("locon", "input"), ("locon", "mixed")],
)
def test_network_weights_start_entry_decomposed_layers_as_lycoris(
    pipe,  # noqa: F811
    algo,
    axis,
    tmp_path,
    monkeypatch,
):
    """kohya's --network_weights with a preset file whose entry gives the ResNets weight_decompose: LyCORIS
    loads the file's dora_scale into those modules only; dbspec's run starts each layer alike (outputs to
    1e-5, the decomposed layers' magnitudes the file's); `input` and `mixed` train, `mixed` resumes
    bit-exact (its run starts LoCon's, LoHa's and LoKr's layers decomposed per output row from the file: the
    `output` cases' start, trained; their kinds' entries train from scratch in
    test_entry_weight_decompose_trains_resumes_and_loads_as_lycoris). LoCon too
    (runtime/init_weights.py; was DBS583 with init_weights). With the entry's own `wd_on_out = false`
    (`axis` input) the file's dora_scale per input column starts those layers in that shape (was DBS583).
    `mixed`: entries of other algorithms decomposed beside LoCon layers that are and are not (was DBS403):
    each kind's layers start from the file (runtime/mixed_init.py), LoCon's dora_scale too."""
    from safetensors.torch import save_file

    from tests.runtime.test_flow_init import _loaded
    from tests.runtime.test_lycoris_sd_dora_file import _ours as _locon_layers
    from tests.runtime.test_lycoris_sd_factor_file import _ours as _factor_layers
    from tests.runtime.test_lycoris_sd_full_file import _convert, _lycoris_modules
    from tests.unit.convert_kit import out_path, plan_of

    preset = {"input": WEIGHTS_PRESET_AXIS, "mixed": WEIGHTS_PRESET_MIXED}.get(axis, WEIGHTS_PRESET)
    (tmp_path / "preset.toml").write_text(preset, encoding="utf-8")
    made = _weights_network(pipe, tmp_path, monkeypatch, algo)
    torch.manual_seed(9)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}
    assert 0 < sum(k.endswith(".dora_scale") for k in state) < len({k.split(".")[0] for k in state})
    save_file(state, str(tmp_path / "prev.safetensors"))
    made = _weights_network(pipe, tmp_path, monkeypatch, algo)
    made.load_weights(str(tmp_path / "prev.safetensors"))
    theirs = _lycoris_modules(made)
    factor = ' "factor=4"' if algo == "lokr" else ""
    args = (
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=preset.toml" "conv_dim=4" '
        f'"conv_alpha=2"{factor}'
    )
    plan = plan_of(_convert(tmp_path, args), tmp_path, ["model.base=builtin:tiny-sd1"])
    a = plan.adapter
    if axis == "mixed":
        kinds = {(b.kind, b.dora) for b in [*a.blocks, *a.text_encoder_blocks]}
        assert a.init_weights and kinds == {("loha", "on"), ("lokr", "on"), ("adapter", "on")}, kinds
    else:
        assert a.init_weights and [b.dora for b in a.blocks] == ["on"]
        assert [b.dora_axis for b in a.blocks] == ["input" if axis == "input" else "adapter"]
    shapes = {list(v.shape)[0] == 1 for k, v in state.items() if k.endswith(".dora_scale")}
    assert shapes == {axis == "input"}  # LyCORIS's per-column (1, in, ...) or per-row (out, 1, ...) shape
    comps, count = _loaded(plan)
    assert count == len(theirs)
    if axis == "mixed":  # every kind's layers
        ours = {**_locon_layers(comps), **_factor_layers(comps)}
    else:
        ours = (_locon_layers if algo == "locon" else _factor_layers)(comps)
    assert sorted(ours) == sorted(theirs)
    decomposed = 0
    for name, lyco in theirs.items():
        layer, base = ours[name], ours[name].get_base_layer()
        scale = dora_scale_of(layer, "default")
        assert (scale is not None) == bool(getattr(lyco, "wd", False)), name
        if scale is not None:  # the file's magnitudes, moved off the base weight's norms
            torch.testing.assert_close(scale.detach(), lyco.dora_scale.detach(), rtol=0, atol=0)
            torch.testing.assert_close(scale.detach(), state[f"{name}.dora_scale"], rtol=0, atol=0)
            decomposed += 1
        x = (
            torch.randn(2, base.in_features)
            if isinstance(base, nn.Linear)
            else torch.randn(1, base.in_channels, 8, 8)
        )
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
    assert decomposed
    # the start above; `mixed` trains and resumes LoCon's, LoHa's and LoKr's layers from the file. Per input
    # column one run (LoCon's, runtime/init_weights.py's own start) trains from the file: LoHa's and LoKr's
    # per-column layers start as checked above, then train as a per-column entry trained from scratch does
    # (test_entry_weight_decompose_trains_resumes_and_loads_as_lycoris[loha-axis_own], resumed in [loha-on])
    if axis == "output" or axis == "input" and algo != "locon":
        return
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]))
    assert whole.status == "finished"
    if axis != "mixed":  # `mixed` starts every kind's layers from the file: the one resume of a file start
        return
    split = compile_spec(spec, [*base, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses


def test_flux_locon_file_with_dora_scale_in_some_modules(tmp_path):
    """lycoris.kohya --dim_from_weights on Flux with a LoCon file whose fused q/k/v and img_in modules hold
    `dora_scale` and the rest not: create_network_from_weights builds those LoConModules with weight_decompose
    only (make_module_from_state_dict); dbspec's blocks give exactly those layers LyCORIS's decomposition
    (`dora = "on"`, every part of a fused layer), each layer starts where LyCORIS rebuilds it (outputs to
    1e-5), the run resumes bit-exact and its export carries `dora_scale` on the same modules, which
    lycoris-lora loads back with the trained outputs."""
    from lycoris import kohya as lycoris_kohya
    from lycoris.modules.locon import LoConModule
    from safetensors.torch import load_file, save_file

    from dbspec.runtime.tiny import build_pipeline as build
    from tests.runtime.test_flow_init import _loaded
    from tests.runtime.test_lycoris_flow_factor_file import (
        BASE,
        RUN,
        _converted,
        _fused_linear,
        _layers,
        _tree,
    )

    decomposed = ("qkv", "img_in")
    torch.manual_seed(5)
    tensors, linears = {}, {}
    for name, parts in _layers(build(BASE).transformer.float(), True).items():
        linears[name] = _fused_linear(parts)
        wd = name.endswith(decomposed)
        module = LoConModule(name, linears[name], 1.0, 2, 1.5, weight_decompose=wd)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(file), None, None, _tree(linears))
    held = {m.lora_name for m in network.unet_loras if m.wd}
    assert held and len(held) < len(network.unet_loras)
    for module in network.unet_loras:
        module.apply_to()
    spec = _converted(tmp_path)
    plan = compile_spec(spec, RUN)
    a = plan.adapter
    assert (a.kind, a.dora, a.dora_form) == ("lora", False, "lycoris")
    assert any(b.dora == "on" for b in a.blocks)
    comps, count = _loaded(plan)
    assert count == len(network.unet_loras)
    torch.manual_seed(0)
    for name, parts in _layers(comps.unet.float().eval(), True).items():
        assert all((dora_scale_of(p, "default") is not None) == (name in held) for p in parts), name
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            torch.testing.assert_close(ours, linears[name](x), rtol=0, atol=1e-5)
    base = [*RUN, "schedule.steps=2"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    split = compile_spec(spec, [*base, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    (again,) = Path(resumed.final).glob("*.kohya.safetensors")
    saved, again = load_file(str(export)), load_file(str(again))
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    assert {k.split(".")[0] for k in saved if k.endswith(".dora_scale")} == held
    assert {k: list(v.shape) for k, v in saved.items() if k.endswith(".dora_scale")} == {
        k: list(v.shape) for k, v in tensors.items() if k.endswith(".dora_scale")
    }
    # lycoris-lora rebuilds the export (its loader, kohya's for --dim_from_weights) with the trained outputs
    trained = _layers(whole.components.unet.float().eval(), True)
    fresh = {name: _fused_linear([p.base_layer for p in parts]) for name, parts in trained.items()}
    loaded, _ = lycoris_kohya.create_network_from_weights(1.0, str(export), None, None, _tree(fresh))
    assert {m.lora_name for m in loaded.unet_loras if m.wd} == held
    for module in loaded.unet_loras:
        module.apply_to()
    for name, parts in trained.items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.nn.functional.linear(x, fresh[name].weight, fresh[name].bias)
            assert not torch.allclose(ours, plain, atol=1e-4), name
            torch.testing.assert_close(ours, fresh[name](x), rtol=1e-4, atol=1e-4, msg=name)


def test_flux_locon_file_with_dora_scale_in_some_clip_modules(tmp_path):
    """The same with CLIP-L modules (lora_te1_*) among the file's: each CLIP layer's MLP fc1 holds a
    `dora_scale`, its attention Linears not, as the denoiser's qkv do and the rest not.
    create_network_from_weights on kohya's encoder list builds the fc1 LoConModules alone with
    weight_decompose; dbspec's text-encoder blocks give exactly those layers LyCORIS's decomposition
    (`dora = "on"`; was DBS403), every layer starts where LyCORIS rebuilds it (magnitudes the file's,
    outputs to 1e-5), and the run trains them. The same kind of state (some layers' `dora_scale` from a
    file) resumes bit-exact in test_flux_locon_file_with_dora_scale_in_some_modules, DoRA on CLIP in
    test_lycoris's `dora` run."""
    import copy

    from lycoris import kohya as lycoris_kohya
    from lycoris.modules.locon import LoConModule
    from safetensors.torch import load_file, save_file

    from dbspec.runtime.tiny import build_pipeline as build
    from tests.runtime.test_flow_init import _loaded
    from tests.runtime.test_lycoris_flow_factor_file import (
        BASE,
        RUN,
        _converted,
        _fused_linear,
        _layers,
        _tree,
    )

    torch.manual_seed(5)
    tensors, linears = {}, {}
    for name, parts in _layers(build(BASE).transformer.float(), True).items():
        linears[name] = _fused_linear(parts)
        module = LoConModule(name, linears[name], 1.0, 2, 1.5, weight_decompose=name.endswith("qkv"))
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    clip, t5 = build(BASE).text_encoder.float(), build(BASE).text_encoder_2.float()
    names = {}
    for path, layer in clip.named_modules():
        if path.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1")):
            name = "lora_te1_" + f"text_model.{path}".replace(".", "_")
            module = LoConModule(
                name, copy.deepcopy(layer), 1.0, 2, 1.5, weight_decompose=path.endswith("fc1")
            )
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.2)
            tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
            names[path] = name
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    theirs = copy.deepcopy(clip)
    kohya_clip = nn.Module()  # kohya's transformers CLIPTextModel: its layers under text_model
    kohya_clip.add_module("text_model", theirs)
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(file), None, [kohya_clip, t5], _tree(linears)
    )
    held = {m.lora_name for m in network.text_encoder_loras if m.wd}
    assert held and len(held) < len(network.text_encoder_loras) == len(names)
    for module in [*network.unet_loras, *network.text_encoder_loras]:
        module.apply_to()
    spec = _converted(tmp_path)
    plan = compile_spec(spec, RUN)
    assert not plan.adapter.dora and any(b.dora == "on" for b in plan.adapter.text_encoder_blocks)
    comps, count = _loaded(plan)
    assert count == len(network.unet_loras) + len(names)
    ours = dict(comps.text_encoders[0].float().eval().named_modules())
    torch.manual_seed(0)
    for path, layer in theirs.named_modules():
        if path not in names:
            continue
        scale = dora_scale_of(ours[path], "default")
        assert (scale is not None) == (names[path] in held), path
        if scale is not None:
            torch.testing.assert_close(scale, tensors[f"{names[path]}.dora_scale"], rtol=0, atol=0)
        x = torch.randn(3, ours[path].base_layer.in_features)
        with torch.no_grad():
            assert not torch.allclose(ours[path](x), ours[path].base_layer(x), atol=1e-3), path
            torch.testing.assert_close(ours[path](x), layer(x), rtol=0, atol=1e-5)
    base = [*RUN, "schedule.steps=2"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]))
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    clip_scales = {k for k in saved if k.startswith("lora_te1_") and k.endswith(".dora_scale")}
    assert {k.split(".")[0] for k in clip_scales} == held
    assert any(not torch.equal(saved[k], tensors[k]) for k in clip_scales), "the CLIP magnitudes trained"


# entries' own weight_decompose in a run of several algorithms (issue 12; was DBS583): on a LoCon network the
# LoHa MLPs (U-Net and CLIP) and the LoKr down- / upsamplers decomposed beside LoCon layers that are not; the
# reverse, the LoCon ResNets decomposed beside LoHa / LoKr layers that are not, on a LoKr network
MIXED_ENTRIES = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.FeedForward]
algo = "loha"
dim = 2
weight_decompose = true
[module_algo_map.Downsample2D]
algo = "lokr"
weight_decompose = "yes"
[module_algo_map.Upsample2D]
algo = "lokr"
weight_decompose = true
[module_algo_map.CLIPMLP]
algo = "loha"
dim = 2
weight_decompose = true
"""
MIXED_REVERSE = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
weight_decompose = true
[module_algo_map.FeedForward]
algo = "loha"
dim = 2
[module_algo_map.CLIPMLP]
algo = "locon"
weight_decompose = true
"""


@pytest.mark.parametrize(
    "algo, entries, decomposed, plain",
    [
        ("locon", "mixed", {"LohaModule", "LokrModule"}, {"LoConModule"}),
        ("lokr", "reverse", {"LoConModule"}, {"LohaModule", "LokrModule"}),
    ],
)
def test_mixed_entries_weight_decompose_build_as_lycoris(
    pipe,  # noqa: F811
    algo,
    entries,
    decomposed,
    plain,
    tmp_path,
    monkeypatch,
):
    """A preset's entries of other algorithms with their own weight_decompose, on the tiny SD 1.x: the
    plan's adapter (each kind's layers through its own pass, runtime/mixed_kinds.py) decomposes exactly the
    layers lycoris-lora 4.1.3's network from the same file does, each dora_scale in its shape; every adapter
    tensor moved at random and exported as LyCORIS's keys, the network loads them strictly and each of its
    modules (U-Net and CLIP) computes the adapted layer's output (1e-5)."""
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.lycoris_export import lycoris_state

    PRESETS[entries] = MIXED_ENTRIES if entries == "mixed" else MIXED_REVERSE
    try:
        path, plan = _converted_plan(tmp_path, entries, algo)
    finally:
        del PRESETS[entries]
    a = plan.adapter
    assert not a.dora and {b.kind for b in a.blocks if b.dora == "on"} == (
        {"loha", "lokr"} if algo == "locon" else {"lora"}
    )
    made = _lycoris(pipe, path, monkeypatch, algo)
    mods = [*made.unet_loras, *made.text_encoder_loras]
    assert {type(m).__name__ for m in mods if m.wd} == decomposed
    assert {type(m).__name__ for m in mods if not m.wd} == plain
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    assert _ours(SimpleNamespace(unet=unet, text_encoders=[text])) == _decomposed(made)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every factor and magnitude moved (a magnitude by up to 10 %)
        for model in (unet, text):
            for name, param in model.named_parameters():
                if param.requires_grad:
                    noise = torch.randn(param.shape, generator=gen)
                    param.mul_(1 + 0.1 * noise) if "dora_scale" in name else param.add_(0.1 * noise)
    state = lycoris_state(unet=unet, text_encoders=[text], family="sd1", dtype="fp32")
    theirs = {f"{m.lora_name}.{k}" for m in mods for k in m.state_dict()}
    assert sorted(state) == sorted(theirs)
    layers = {
        **{"lora_unet_" + n.replace(".", "_"): m for n, m in unet.named_modules()},
        **{"lora_te_text_model_" + n.replace(".", "_"): m for n, m in text.named_modules()},
    }
    for module in mods:
        prefix = module.lora_name + "."
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        org = module.org_module[0]
        shape = (2, org.in_features) if isinstance(org, nn.Linear) else (1, org.in_channels, 8, 8)
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            got, want = module.eval()(x), layers[module.lora_name].eval()(x)
        assert not torch.allclose(got, org(x), atol=1e-3), module.lora_name  # the update counts
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=module.lora_name)


# a block's own Tucker form decomposed (a map entry's use_tucker with weight_decompose, or on a dora_wd
# network): (adapter kind, the adapter's dora, block kind, the block's dora)
TUCKER_DORA = [
    ("lora", False, "lora", "on"),
    ("lokr", False, "loha", "on"),
    ("lora", True, "lora", "adapter"),
]


@pytest.mark.parametrize("adapter_kind, adapter_dora, block_kind, block_dora", TUCKER_DORA)
def test_a_blocks_own_tucker_decomposes_as_lycoris_modules(
    adapter_kind, adapter_dora, block_kind, block_dora
):
    """The block's k x k convolution in its Tucker form with LyCORIS's weight decomposition (was DBS583 /
    DBS579): the same output as lycoris-lora 4.1.3's LoConModule / LohaModule built with use_tucker and
    weight_decompose once its factors and magnitude are copied over, per output row and per input column,
    and the same gradients for every factor and dora_scale."""
    from dbspec.plan.model import AdapterPlan, BlockPlan
    from dbspec.runtime.adapters import add_lora
    from tests.runtime import test_lycoris_switches as switches

    rank, alpha = switches.RANK, switches.ALPHA
    for axis in ("output", "input"):
        torch.manual_seed(0)
        net = switches.Net()
        base = copy.deepcopy(net)
        kind = "adapter" if block_kind == adapter_kind else block_kind
        block = BlockPlan(
            pattern="conv", kind=kind, rank=rank, alpha=alpha, conv_rank=rank, conv_alpha=alpha,
            tucker="on", dora=block_dora,
        )  # fmt: skip
        adapter = AdapterPlan(
            kind=adapter_kind, rank=rank, alpha=alpha, conv_rank=rank, conv_alpha=alpha,
            conv_targets=("conv",), lokr_unit_scale=adapter_kind == "lokr", dora=adapter_dora,
            dora_form="lycoris", dora_axis=axis, blocks=(block,),
        )  # fmt: skip
        add_lora(net, adapter, ("proj",), seed=3, conv=True)
        layer, generator = net.conv, torch.Generator().manual_seed(11)
        switches._randomise(net, generator)
        with torch.no_grad():  # the magnitudes away from the base norms too
            scale = dora_scale_of(layer, "default")
            scale.mul_(1 + 0.2 * torch.rand(scale.shape, generator=generator))
        reference = copy.deepcopy(base.conv)
        theirs = switches._lycoris(
            block_kind, "conv", reference, use_tucker=True, weight_decompose=True, wd_on_out=axis == "output"
        )
        assert set(theirs.state_dict()) & {"lora_mid.weight", "hada_t1"}  # LyCORIS built its Tucker form
        switches._copy_into(theirs, layer, scalar=False)
        with torch.no_grad():
            theirs.dora_scale.copy_(scale)
        theirs.apply_to()
        x = switches._inputs(generator)["conv"]
        out, ref = layer(x), reference(x)
        assert not torch.allclose(out, layer.base_layer(x), atol=1e-3)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        weights = torch.randn(out.shape, generator=generator)
        (out * weights).sum().backward()
        (ref * weights).sum().backward()
        keys = [k for k in theirs.state_dict() if k != "alpha" and not k.startswith("org_")]
        for key in keys:
            ours = scale.grad if key == "dora_scale" else switches._ours(layer, key).grad
            torch.testing.assert_close(ours, theirs.get_parameter(key).grad, rtol=1e-4, atol=1e-5)
