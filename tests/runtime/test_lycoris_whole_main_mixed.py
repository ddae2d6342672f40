"""LyCORIS preset files giving some layers of an `algo=full` or `algo=ia3` network another algorithm (issue
12; was DBS403: their [[adapter.blocks]] held a learning-rate scale alone): the converted plan's blocks of
another `kind` (spec ScaleBlock / TextEncoderBlock) against lycoris-lora 4.1.3's create_network on tiny SD 1.x
(each layer's module class, the low-rank layers' dims and scales), and a tiny run of the full network whose
kohya export loads in lycoris-lora's create_network_from_weights to the trained U-Net's output; with
`--scale_weight_norms` LyCORIS's max norm scales the entries' LoCon / LoHa layers alone (FullModule and
IA3Module keep the base apply_max_norm)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED,
    PRESETS,
    _converted_plan,
    _lycoris,
    pipe,
)
from tests.runtime.test_lycoris_mixed_full import _classes, _lycoris_classes

lycoris_kohya = pytest.importorskip("lycoris.kohya")


def _plan(tmp_path: Path, algo: str, args: str = ""):
    PRESETS["whole_main"] = MIXED
    try:
        return _converted_plan(tmp_path, "whole_main", algo, args)
    finally:
        del PRESETS["whole_main"]


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_entries_of_other_kinds_build_as_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """Every layer of the U-Net and CLIP LyCORIS builds from the file is the plan's, in its class (LoCon on
    the ResNets and conv_in, LoHa on the MLPs, the network's FullModule / IA3Module elsewhere), at its dim
    and scale."""
    path, plan = _plan(tmp_path, algo)
    a = plan.adapter
    assert a.kind == algo and {b.kind for b in a.blocks} == {"lora", "loha"}
    assert {b.kind for b in a.text_encoder_blocks} == {"loha"}
    theirs = _lycoris_classes(_lycoris(pipe, path, monkeypatch, algo))
    own = {"full": "FullModule", "ia3": "IA3Module"}[algo]
    assert {v[0] for v in theirs.values()} == {own, "LoConModule", "LohaModule"}
    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    text = copy.deepcopy(pipe.text_encoder)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    ours = {**_classes(unet, "lora_unet_"), **_classes(text, "lora_te_text_model_")}
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


def test_full_network_with_entries_trains_and_loads_back_in_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    """The full network's converted spec with `--scale_weight_norms` trains the tiny SD 1.x U-Net (the
    entries' LoCon / LoHa layers scaled by LyCORIS's max norm, logged; FullModule's copies never counted):
    its kohya export (FullModule's `diff` / `diff_b` beside LoCon's and LoHa's keys) loads in lycoris-lora's
    create_network_from_weights to the trained U-Net's output, and its adapter folders (the full layers'
    `unet/`, `unet/lora/`, `unet/loha/`) load back as `dbspec sample` and a resume load them; kohya's
    `--network_weights` of the export starts a converted run at the trained outputs. No resume
    run: the saved kinds (full copies, LoCon, LoHa, their fixed max-norm scalars) are each resumed
    bit-exact elsewhere (test_lycoris_mixed_module_dropout.py, test_lycoris_mixed_max_norm.py)."""
    import json

    from dbspec.runtime.max_norm import lycoris_norm_modules, lycoris_update
    from dbspec.runtime.weights import load_peft_adapters
    from tests.runtime.test_lycoris import _unet_output
    from tests.unit.convert_kit import out_path

    limit = 1e-3
    path, plan = _plan(tmp_path, "full", f"--scale_weight_norms={limit}")
    assert (plan.adapter.max_norm, plan.adapter.max_norm_form) == (limit, "lycoris")
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "train.text_encoder=false", "logging.every=1"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished"
    rows = [json.loads(line) for line in (spec.parent / "whole" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    trained = whole.components.unet.eval()
    modules = lycoris_norm_modules(trained, [])
    assert {m.kind for m in modules} == {"lora", "loha"}  # no full layer
    assert 0 < rows[-1]["max_norm/keys_scaled"] <= len(modules)
    with torch.no_grad():
        assert max(float(lycoris_update(m).norm()) for m in modules) <= limit * (1 + 1e-5)
    files = sorted(str(p.relative_to(whole.final)) for p in Path(whole.final).rglob("*.safetensors"))
    assert {"unet/adapter_model.safetensors", "unet/lora/adapter_model.safetensors"} <= set(files)
    assert "unet/loha/adapter_model.safetensors" in files

    theirs = {
        k: v
        for k, v in _lycoris_classes(_lycoris(pipe, path, monkeypatch, "full")).items()
        if k.startswith("lora_unet_")
    }
    assert _classes(trained, "lora_unet_") == theirs
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    assert any(k.endswith(".diff") for k in load_file(str(export)))
    network = lycoris_kohya.LycorisNetworkKohya
    for attr in (
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    ):
        monkeypatch.setattr(network, attr, [])  # every module from the file (test_lycoris.py's loader)
    fresh = copy.deepcopy(pipe.unet)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    loaded, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, named, fresh, for_inference=True
    )
    loaded.apply_to(named, fresh, apply_text_encoder=False, apply_unet=True)
    assert len(loaded.unet_loras) == len(theirs)
    assert {type(m).__name__ for m in loaded.unet_loras} == {"FullModule", "LoConModule", "LohaModule"}
    output = _unet_output(trained)
    torch.testing.assert_close(_unet_output(fresh), output, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_unet_output(pipe.unet), output, atol=1e-3)  # training moved it
    again = copy.deepcopy(pipe.unet)
    assert load_peft_adapters(Path(whole.final), {"unet": again}) == ["unet"]
    torch.testing.assert_close(_unet_output(again.eval()), output, rtol=1e-5, atol=1e-5)

    # kohya's --network_weights of that export with the same preset (was DBS403, a spec's DBS578): each kind's
    # layers start from the file (runtime/mixed_init.py; FullModule's diff added once), the trained outputs
    second = tmp_path / "second"
    second.mkdir()
    (second / "prev.safetensors").write_bytes(export.read_bytes())
    PRESETS["whole_main"] = MIXED
    try:
        _, started = _converted_plan(second, "whole_main", "full", "--network_weights=prev.safetensors")
    finally:
        del PRESETS["whole_main"]
    assert started.adapter.init_weights.endswith("prev.safetensors")
    rerun = [*base, "output.dir=again", "schedule.steps=1", "optimizer.lr=1e-12"]  # moves nothing visible
    again = execute(compile_spec(out_path(second), rerun), keep_models=True)
    torch.testing.assert_close(_unet_output(again.components.unet.eval()), output, rtol=1e-5, atol=1e-5)
