"""LyCORIS files holding modules of several kinds on SD 1.x (issue 12; runtime/mixed_init.py,
compiler/mixed_init_file.py): a preset run giving layers their own algo (test_lycoris_algo_maps's MIXED,
test_lycoris_mixed_full's full / Diag-OFT entries) started from lycoris-lora 4.1.3's file of that network
(every parameter moved at random, some modules left out): kohya's steps (create_network over the preset,
apply_to, load_weights) and dbspec's converted run start every layer alike (outputs to 1e-5); a tiny run from
the file trains (one resumes bit for bit)."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_algo_maps import MIXED, PRESETS, _converted_plan
from tests.runtime.test_lycoris_mixed_full import MIXED_FULL

lycoris_kohya = pytest.importorskip("lycoris.kohya")


# Diag-OFT on the MLPs with their own constraint and row rescale (blocks' alpha and `rescaled`, was DBS403)
# and on CLIP's attention at the network's, beside a LoKr network's layers, LoCon ResNets and LoHa CLIP MLPs
OFT_RESCALED = MIXED_FULL.replace(
    '[module_algo_map.FeedForward]\nalgo = "full"',
    '[module_algo_map.FeedForward]\nalgo = "diag-oft"\nconstraint = 0.001\nrescaled = true',
).replace('algo = "full"', 'algo = "diag-oft"')


# the ResNets' LoCon entry in LyCORIS's Tucker form (use_tucker: its 3x3 convolutions' lora_mid; was DBS403),
# the downsampler's LoHa entry (hada_t1 / hada_t2) and conv_out's LoKr entry of the network's own algo at dim
# 2 (its second factor low-rank: lokr_t2) in theirs too (was DBS403)
TUCKER = MIXED.replace(
    '[module_algo_map.ResnetBlock2D]\nalgo = "locon"\n',
    '[module_algo_map.ResnetBlock2D]\nalgo = "locon"\nuse_tucker = true\n',
) + (
    '[module_algo_map.Downsample2D]\nalgo = "loha"\nuse_tucker = true\n'
    '[name_algo_map.conv_out]\nalgo = "lokr"\ndim = 2\nuse_tucker = true\n'
)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, preset_path, monkeypatch, algo: str, **args):
    """kohya's create_network (dim 4, alpha 1, conv_dim 4; `args` its other network_args) over the preset,
    applied to copies of the tiny CLIP and U-Net."""
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    unet = copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo=algo, conv_dim="4", preset=str(preset_path), **args
    )
    made.apply_to(named, unet, True, True)
    return made


def _tuckers(adapter) -> set[str]:
    """The kinds of the denoiser's blocks giving their layers the Tucker form ("adapter": the adapter's)."""
    assert not adapter.tucker  # a run of several kinds: the blocks' own alone (DBS578)
    return {b.kind for b in adapter.blocks if b.tucker == "on"}


def _ours(comps) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return kit.kohya_layers(comps, BaseTunerLayer)


@pytest.mark.parametrize(
    ("algo", "preset"),
    [
        ("lokr", TUCKER),
        ("locon", TUCKER),
        ("locon", MIXED_FULL),
        ("lokr", OFT_RESCALED),
    ],
    ids=["lokr-tucker-lora-loha", "locon-tucker-loha-lokr", "locon-loha-full", "lokr-lora-loha-oft"],
)
def test_mixed_preset_run_starts_from_its_file_as_lycoris(pipe, tmp_path, monkeypatch, algo, preset):
    preset_path = tmp_path / "mixed.toml"
    preset_path.write_text(preset, encoding="utf-8")
    made = _network(pipe, preset_path, monkeypatch, algo)
    kinds = {type(m).__name__ for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert len(kinds) >= 3, kinds
    full = "FullModule" in kinds  # its load hook pops every module's diff: none left out
    start = kit.moved_state(made, seed=1, scale=0.1)
    built_at = {k: v.clone() for k, v in start.items() if k.endswith(".alpha")}  # the network's alphas
    # the LoKr network's file saved at other alphas (was refused when the run loaded it): LyCORIS's
    # modules keep the scale they were built with, the converted run trains at init_alpha "ignore"
    changed = _other_alphas(start) if preset is OFT_RESCALED else set()
    path = kit.save_state(start, tmp_path, drop=0 if full else 5)
    state = load_file(str(path))
    changed &= {k.split(".")[0] for k in state}
    in_file = {k.split(".")[0] for k in state}
    made = _network(pipe, preset_path, monkeypatch, algo)  # a fresh network, as kohya builds it
    made.load_weights(str(path))  # train_network.py's load after apply_to

    PRESETS["mixed"] = preset
    try:
        _, plan = _converted_plan(tmp_path, "mixed", algo, "--network_weights=prev.safetensors")
    finally:
        del PRESETS["mixed"]
    assert plan.adapter.init_weights and plan.adapter.init_partial
    assert {b.kind for b in plan.adapter.blocks} - {"adapter", plan.adapter.kind}, "several kinds"
    assert plan.adapter.init_alpha == ("ignore" if changed else "match")
    if preset is TUCKER:  # the ResNets' LoCon, the downsampler's LoHa and conv_out's LoKr (the
        # network's own algo) in their Tucker form: the file's lora_mid, hada_t1 / hada_t2, lokr_t2 start them
        # on a LoCon network the ResNets' are its own layers ("adapter"), conv_out's LoKr another kind's
        assert _tuckers(plan.adapter) == (
            {"lora", "loha", "adapter"} if algo == "lokr" else {"adapter", "loha", "lokr"}
        )
        for tail in ("lora_mid.weight", "hada_t1", "hada_t2", "lokr_t2"):
            assert any(k.endswith(f".{tail}") for k in state), tail
    if preset is OFT_RESCALED:  # the MLPs' entry's own constraint and rescale on its block
        oft = [b for b in plan.adapter.blocks if b.kind == "diag-oft"]
        assert [(b.alpha, b.rescaled) for b in oft] == [(0.001, "on")]
        assert "rescale" in {k.rsplit(".", 1)[-1] for k in state}
    comps, count = _loaded(plan)
    assert count == len(in_file)
    if full:  # a file of every module loads strictly too (init_partial false): LoCon's `lora_down.weight`
        # under its module, not `<module>.lora_down` (runtime/lycoris_init.py), the same values again
        strict = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, init_partial=False))
        assert load_init_weights(strict, comps.unet, comps.text_encoders) == count
    ours = _ours(comps)
    theirs = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert set(theirs) <= set(ours)
    left_out = 0
    torch.manual_seed(0)
    for name, lyco in sorted(theirs.items()):
        layer = ours[name]
        base = layer.get_base_layer()
        x = kit.sample_input(base)
        with torch.no_grad():
            mine, want = layer(x), lyco(x)
            torch.testing.assert_close(mine, want, rtol=0, atol=1e-5, msg=name)
            moved = not torch.allclose(mine, base(x), atol=1e-4)
        assert moved or name not in in_file, name
        left_out += name not in in_file
    assert left_out == (0 if full else len(theirs) - len(in_file))
    if preset is TUCKER and algo == "locon":
        return  # the LoCon network's start alone: the LoKr network's run trains these layers' forms

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: not k.endswith(".alpha")), "the run trained from the file"
    for name in changed:  # the export carries the alpha each layer trained at, not the file's (a LoKr
        # whose factors are both full trains at scale 1: LyCORIS's buffer holds its dim, dbspec writes 1)
        key = f"{name}.alpha"
        assert not torch.equal(saved[key].float(), state[key].float()), key
        if f"{name}.lora_up.weight" in state or f"{name}.hada_w1_a" in state:
            assert torch.equal(saved[key].float(), built_at[key].float()), key
    # the export holds the rescales / Tucker cores in LyCORIS's
    for tail in (".rescale", ".lora_mid.weight", ".hada_t1", ".hada_t2", ".lokr_t2"):
        theirs_state = made.state_dict()  # shapes: lycoris-lora's network's every such tensor
        assert {k: v.shape for k, v in saved.items() if k.endswith(tail)} == {
            k: v.shape for k, v in theirs_state.items() if k.endswith(tail)
        }
    if preset is TUCKER:  # the one of these runs that also resumes: LoRA, LoHa and LoKr layers in their
        # Tucker forms from a file (the other presets' kinds resume in test_lycoris_algo_maps,
        # test_lycoris_mixed_module_dropout and test_lycoris)
        _export_rebuilds_in_lycoris(pipe, whole, made, saved)
        kit.resumes_bit_exact(tmp_path, whole, saved)


def _other_alphas(state: dict[str, torch.Tensor]) -> set[str]:
    """Every third module's nonzero `alpha` (by sorted name) times 3 in `state`, in LoCon, LoHa, LoKr and
    Diag-OFT modules alike; returns their names."""
    names = sorted({k.split(".")[0] for k, v in state.items() if k.endswith(".alpha") and float(v)})
    for name in names[::3]:
        state[f"{name}.alpha"] = state[f"{name}.alpha"] * 3
    tails = {k.split(".", 1)[1] for k in state if k.split(".")[0] in names[::3]}
    assert {"lora_up.weight", "hada_w1_a", "lokr_w1", "oft_blocks"} <= tails, tails
    return set(names[::3])


def _export_rebuilds_in_lycoris(pipe, whole, made, saved) -> None:
    """The run's export, read by lycoris-lora's create_network_from_weights (kohya's --dim_from_weights),
    rebuilds every module of `made` (the preset's network) in its class, Tucker cores included, holding the
    export's tensors exactly, each computing what `made` computes with the export loaded (load_weights)."""
    from pathlib import Path

    from tests.runtime.test_lycoris_sd_rebuilt_file import _theirs

    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    rebuilt = _theirs(pipe, export)
    made.load_weights(str(export))
    preset = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert {n: type(m).__name__ for n, m in rebuilt.items()} == {
        n: type(m).__name__ for n, m in preset.items()
    }
    cores = 0
    torch.manual_seed(1)
    for name, module in rebuilt.items():
        state = module.state_dict()
        assert state.keys() == preset[name].state_dict().keys(), name
        for key, value in state.items():
            assert torch.equal(value, saved[f"{name}.{key}"].to(value.dtype)), f"{name}.{key}"
        cores += any(k in state for k in ("lora_mid.weight", "hada_t1", "lokr_t2"))
        x = kit.sample_input(module.org_module[0])
        with torch.no_grad():
            torch.testing.assert_close(module(x), preset[name](x), rtol=0, atol=1e-6, msg=name)
    assert cores >= 3  # LoCon, LoHa and LoKr Tucker modules


_LOW_RANK = ("LokrModule", "LoConModule", "LohaModule", "GLoRAModule")
GLORA = MIXED_FULL.replace('algo = "full"', 'algo = "glora"').replace(
    '[module_algo_map.CLIPMLP]\nalgo = "loha"', '[module_algo_map.CLIPMLP]\nalgo = "lora"'
)

LORA_FULL = MIXED_FULL.replace(
    '[module_algo_map.CLIPMLP]\nalgo = "loha"', '[module_algo_map.CLIPMLP]\nalgo = "lora"'
)

# the file of a dora_wd LoKr network (issue 12; was DBS403): every LoKr, LoCon and CLIP LoHa module holds a
# dora_scale, the transformers' LoHa MLPs (their entry's weight_decompose false) none; the adapter's `dora`,
# their blocks' "off"
MIXED_WD = MIXED.replace('[module_algo_map.FeedForward]\nalgo = "loha"\ndim = 2\n', "") + (
    '[module_algo_map.FeedForward]\nalgo = "loha"\ndim = 2\nweight_decompose = false\n'
)

# a LoCon network with LoKr on CLIP's attention alone (was DBS403: "it holds no module of the U-Net")
CLIP_LOKR = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]

[module_algo_map.CLIPAttention]
algo = "lokr"
"""


@pytest.mark.parametrize(
    ("algo", "preset", "kind", "others"),
    [
        ("lokr", TUCKER, "lokr", {"lora", "loha"}),
        ("lokr", OFT_RESCALED, "lokr", {"lora", "diag-oft"}),
        ("locon", GLORA, "lora", {"glora"}),
        ("locon", LORA_FULL, "lora", {"full"}),
        ("lokr", MIXED_FULL, "lokr", {"lora", "loha", "full"}),
        ("locon", CLIP_LOKR, "lokr", {"lora"}),
        ("lokr", MIXED_WD, "lokr", {"lora", "loha"}),
    ],
    ids=[
        "lokr-tucker-lora-loha",
        "lokr-lora-loha-oft",
        "locon-glora",
        "locon-full",
        "lokr-lora-loha-full",
        "locon-clip-lokr",
        "lokr-dora-lora-loha",
    ],
)
def test_dim_from_weights_file_of_several_kinds_builds_as_lycoris(
    pipe, tmp_path, monkeypatch, algo, preset, kind, others
):
    """--dim_from_weights with the file of a LoKr network whose preset gives ResNets LoCon (dim 4, alpha 2),
    conv_in LoRA and the MLPs LoHa (dim 2), every parameter moved, some alphas changed, some modules left
    out: lycoris-lora's create_network_from_weights builds each module by its keys (LokrModule, LoConModule,
    LohaModule); dbspec's converted run is of kind lokr with blocks of kind lora / loha, every layer in
    LyCORIS's class at its dim and scale and starting alike (outputs to 1e-5); it trains. A
    LoCon network's file with LoKr on CLIP's attention alone: a lokr adapter whose U-Net is all lora
    blocks."""
    from tests.runtime.test_lycoris_algo_maps import _built
    from tests.runtime.test_lycoris_sd_rebuilt_file import FROM, _theirs

    preset_path = tmp_path / "mixed.toml"
    preset_path.write_text(preset, encoding="utf-8")
    made = _network(
        pipe, preset_path, monkeypatch, algo, **({"dora_wd": "True"} if preset is MIXED_WD else {})
    )
    state = kit.moved_state(made, seed=2, scale=0.1)
    names = sorted({k.split(".")[0] for k in state})
    for name in names[1::4]:  # their own scale (a FullModule has no alpha)
        if f"{name}.alpha" in state:
            state[f"{name}.alpha"] = state[f"{name}.alpha"] * 3
    path = kit.save_state(state, tmp_path, drop=6)
    in_file = {k.split(".")[0] for k in load_file(str(path))}
    theirs = _theirs(pipe, path)
    assert set(theirs) == in_file
    assert len({type(m).__name__ for m in theirs.values()}) >= 2

    plan = kit.converted_plan(tmp_path, FROM)
    a = plan.adapter
    assert a.kind == kind and a.init_partial and a.init_weights
    assert others <= {b.kind for b in (*a.blocks, *a.text_encoder_blocks)}
    assert a.init_scale == (2.0 if "full" in others else 1.0)  # FullModule: W + diff, then + diff again
    if preset is TUCKER:  # the ResNets' `lora_mid`, the downsampler's `hada_t1`, conv_out's `lokr_t2`:
        # their LoCon, LoHa and LoKr blocks' Tucker form (was DBS403)
        assert _tuckers(a) == {"lora", "loha", "adapter"}, [
            (b.kind, b.pattern, b.tucker, b.conv_rank) for b in a.blocks
        ]
    if preset is MIXED_WD:  # the modules' dora_scale: the adapter's dora, the LoHa MLPs' blocks "off"
        assert a.dora and a.dora_form == "lycoris" and a.dora_axis == "output"
        assert {(b.kind, b.dora) for b in a.blocks} == {("lora", "adapter"), ("loha", "off")}
        assert sum(k.endswith(".dora_scale") for k in load_file(str(path))) > 10
    if preset is OFT_RESCALED:  # the MLPs' modules' `rescale`: their blocks' own row rescale (was DBS403)
        assert {b.rescaled for b in a.blocks if b.kind == "diag-oft"} == {"on"}
        assert {b.rescaled for b in a.text_encoder_blocks if b.kind == "diag-oft"} <= {"adapter"}
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = _ours(comps)
    built = {**_built(comps.unet, "lora_unet_"), **_built(comps.text_encoders[0], "lora_te_text_model_")}
    expected = {
        n: (type(m).__name__, m.lora_dim, round(float(m.scale), 12))
        for n, m in theirs.items()
        if type(m).__name__ in _LOW_RANK
    }
    assert {n: v for n, v in built.items() if n in expected} == expected
    torch.manual_seed(0)
    for name, lyco in sorted(theirs.items()):
        layer = ours[name]
        base = layer.get_base_layer()
        x = kit.sample_input(base)
        with torch.no_grad():
            mine = layer(x)
            torch.testing.assert_close(mine, lyco(x), rtol=0, atol=1e-5, msg=name)
            assert not torch.allclose(mine, base(x), atol=1e-4), name

    if preset not in (CLIP_LOKR, MIXED_WD):
        return  # TUCKER's and OFT_RESCALED's LoKr networks' runs from their file train in
        # test_mixed_preset_run_starts_from_its_file_as_lycoris (the Tucker one resuming bit-exact), a run
        # from a file of LoCon, LoHa and full modules there too (locon-loha-full); GLORA's, LORA_FULL's and
        # MIXED_FULL's networks (full / GLoRA entries beside LoCon, LoHa and LoKr layers) train and resume in
        # test_lycoris_mixed_full (trained) and test_lycoris_mixed_module_dropout's
        # test_mixed_module_dropout_trains_and_resumes (MIXED_FULL resumed):
        # their layers here started alike
    # trains (a mixed run from a file resumes in test_mixed_preset_run_starts_from_its_file_as_lycoris)
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: not k.endswith(".alpha")), "the run trained from the file"


DYLORA = MIXED.replace(
    '[module_algo_map.ResnetBlock2D]\nalgo = "locon"', '[module_algo_map.ResnetBlock2D]\nalgo = "dylora"'
)


@pytest.mark.parametrize("algo", ["locon", "dylora"])
def test_mixed_run_beside_dylora_entries_takes_only_their_alphas(pipe, tmp_path, monkeypatch, algo):
    """A LoCon network whose preset gives the ResNets DyLoRA (dim 4, alpha 2), the MLPs LoHa and conv_in LoRA
    (or a DyLoRA network with those entries: its other layers DyLoRA too, was DBS403),
    started from lycoris-lora 4.1.3's file of that network (every parameter moved): load_weights'
    load_state_dict(strict=False) loads the DyLoraModules' `alpha` alone (their weights are up_list /
    down_list), the other modules whole. dbspec's converted run starts every layer alike (outputs to 1e-5,
    the DyLoRA layers at their fresh init with LyCORIS's scale, the others moved); a file DyLoRA alpha other
    than its block's is refused when the run starts; the run trains."""
    from dbspec.runtime.dylora import DyloraLayer

    preset_path = tmp_path / "mixed.toml"
    preset_path.write_text(DYLORA, encoding="utf-8")
    made = _network(pipe, preset_path, monkeypatch, algo)
    dylora = {
        m.lora_name
        for m in [*made.unet_loras, *made.text_encoder_loras]
        if type(m).__name__ == "DyLoraModule"
    }
    assert dylora and len({type(m).__name__ for m in made.unet_loras}) >= 3
    path = kit.saved_file(made, tmp_path, seed=1, scale=0.1)
    state = load_file(str(path))
    assert {f"{n}.lora_down.weight" for n in dylora} <= set(state), "DyLoRA's modules in kohya's layout"
    made = _network(pipe, preset_path, monkeypatch, algo)
    made.load_weights(str(path))

    PRESETS["mixed"] = DYLORA
    try:
        _, plan = _converted_plan(tmp_path, "mixed", algo, "--network_weights=prev.safetensors")
    finally:
        del PRESETS["mixed"]
    assert plan.adapter.init_weights and plan.adapter.init_partial
    assert "dylora" in {plan.adapter.kind} | {b.kind for b in plan.adapter.blocks}
    comps, count = _loaded(plan)
    assert count == len({k.split(".")[0] for k in state})
    ours = _ours(comps)
    theirs = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert set(theirs) <= set(ours)
    torch.manual_seed(0)
    for name, lyco in sorted(theirs.items()):
        layer = ours[name]
        base = layer.get_base_layer()
        x = kit.sample_input(base)
        if name in dylora:
            assert isinstance(layer, DyloraLayer), name
            adapter = next(iter(layer.lora_alpha))
            assert layer.lora_alpha[adapter] == float(lyco.alpha) == float(state[f"{name}.alpha"]), name
        with torch.no_grad():
            mine, want = layer(x), lyco(x)
            torch.testing.assert_close(mine, want, rtol=0, atol=1e-5, msg=name)
            moved = not torch.allclose(mine, base(x), atol=1e-4)
        assert moved == (name not in dylora), name

    # the LoCon network's run trains from the file (DyLoRA entries beside other kinds resume in
    # test_lycoris_algo_maps, a mixed run from a file in test_mixed_preset_run_starts_from_its_file_as_
    # lycoris); the DyLoRA network's with these entries trains and resumes in test_lycoris_mixed_dylora's
    # test_dylora_entries_train_resume_and_load_in_lycoris[dylora], its start from the file checked above
    if algo == "locon":
        whole, _ = kit.whole_run(tmp_path)
        assert whole.status == "finished"

    # the loader's refusals, each on the started models above (reloading them would only add time)
    def load(plan):
        return load_init_weights(plan, comps.unet, comps.text_encoders)

    name = sorted(dylora)[0]  # a DyLoRA alpha of its own: LyCORIS would train at it
    state[f"{name}.alpha"] = state[f"{name}.alpha"] * 3
    kit.save_state(state, tmp_path)
    with pytest.raises(ValueError, match=f"{name}.alpha"):
        load(plan)
    if algo == "dylora":
        return  # the LoCon network's run alone: the same loader
    # init_alpha "ignore" leaves the LoCon / LoHa layers' file alphas unread (LyCORIS's modules keep the
    # scale they were built with) but not a DyLoRA layer's: DyLoraModule scales by the buffer the file fills
    ignoring = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, init_alpha="ignore"))
    with pytest.raises(ValueError, match=f"{name}.alpha"):
        load(ignoring)
    state[f"{name}.alpha"] = state[f"{name}.alpha"] / 3
    loha = next(n for n in sorted(theirs) if type(theirs[n]).__name__ == "LohaModule")
    state[f"{loha}.alpha"] = state[f"{loha}.alpha"] * 3
    kit.save_state(state, tmp_path)
    with pytest.raises(ValueError, match=f"{loha}.alpha"):
        load(plan)
    comps, _ = _loaded(ignoring)  # models started afresh by the plan that ignores the file's alphas
    x = kit.sample_input(ours[loha].get_base_layer())
    with torch.no_grad():  # at the scale LyCORIS's module was built with, whatever the file's alpha
        made.load_weights(str(tmp_path / "prev.safetensors"))
        torch.testing.assert_close(_ours(comps)[loha](x), theirs[loha](x), rtol=0, atol=1e-5)
