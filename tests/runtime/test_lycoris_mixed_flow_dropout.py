"""A LyCORIS preset file giving kohya's Flux layers several algos (module_algo_map / name_algo_map entries)
with the network's `module_dropout` (issue 12; was DBS403 / DBS578 on the fused Linears): every LyCORIS
module's forward (LoConModule, LohaModule, LokrModule, FullModule, IA3Module, DiagOFTModule in lycoris-lora
4.1.3) draws `torch.rand(1) < module_dropout` first, once per training forward of its layer, and a fused
Linear (q/k/v, linear1) is ONE module: diffusers' parts of it share that one draw, the first part called
drawing (runtime/mixed_kinds.py add_module_dropout: runtime/dylora.py FusedSkip for full / IA^3 / Diag-OFT
parts, fused_dropout.py for LoRA parts, fused_lycoris_dropout.py for LoKr / LoHa parts). A tiny run trains
and resumes bit-exact, and each kohya layer's module in lycoris-lora's network built from the same preset
file (the run's export loaded into it) gives, in training, from the same generator state, the trained
parts' outputs stacked in kohya's rows and leaves the generator where the parts leave it. The GLoRA
network's with dora_wd too (was DBS403 / a spec's DBS583): its LoHa entry's fused q/k/v decomposed whole,
its one draw skipping the decomposed update as LohaModule's does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    FLUX_FILE,
    _base,
    _kohya_layers,
    _kohya_tree,
    _run,
)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RATE = 0.25


def _converted(tmp_path, preset: str, algo: str, overrides, args: str = ""):
    from tests.unit.convert_kit import flux_lycoris, plan_of

    outcome = flux_lycoris(tmp_path, f'"algo={algo}" "preset={preset}" "module_dropout={RATE}" {args}')
    return plan_of(outcome, tmp_path, overrides)


def _call_order(parts: list[nn.Module], transformer: nn.Module) -> list[nn.Module]:
    """diffusers' order of the parts' calls: a single block's proj_mlp (kohya's last rows) first."""
    mlps = {id(b.proj_mlp) for b in transformer.single_transformer_blocks}
    return sorted(parts, key=lambda p: id(p) not in mlps)


@pytest.mark.parametrize(
    ("algo", "other", "qkv", "linear1"),
    [
        ("locon", "loha", "full", "ia3"),
        # these kinds' weights on the fused layers resume in test_lycoris_mixed_flow_full's
        # test_lycoris_kinds_on_flux_fused_layers_train_resume_and_load_in_lycoris, the module dropout's draws
        # in the first case here, GLoRA's in test_boft_and_glora_entries_draw_once_per_fused_layer: these two
        # runs train without a resume
        ("lokr", "locon", "diag-oft", "ia3"),
        ("locon", "loha", "glora", "ia3"),
        ("glora", "loha", "full", "ia3"),  # a GLoRA network beside other kinds (was DBS403 / DBS578)
    ],
)
def test_module_dropout_draws_once_per_lycoris_module_on_fused_layers(
    tmp_path, monkeypatch, algo, other, qkv, linear1
):
    file = tmp_path / "mixed.toml"
    text = FLUX_FILE.replace("OTHER", other).replace("QKV", qkv).replace("LINEAR1", linear1)
    file.write_text(text, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE, "schedule.steps=4"]  # every module trained in some step
    wd = {"dora_wd": "True"} if algo == "glora" else {}  # the LoHa block's own dora (the adapter has none)
    plan = _converted(tmp_path, file.name, algo, base, " ".join(f'"{k}={v}"' for k, v in wd.items()))
    kinds = {"full", "ia3", qkv, linear1, {"locon": "lora"}.get(other, other)}
    assert plan.adapter.module_dropout == RATE and plan.adapter.fused
    doras = [(b.kind, b.dora) for b in plan.adapter.blocks if b.dora != "adapter"]
    assert doras == ([("loha", "on")] if wd else [])
    resume = qkv == "full"  # see the cases above
    theirs, fused = _draws_as_lycoris(tmp_path, monkeypatch, file, algo, kinds, base, wd, resume=resume)
    decomposed = {n for n, m in theirs.items() if getattr(m, "wd", False)}
    assert decomposed == ({"lora_unet_double_blocks_0_txt_attn_qkv"} if wd else set())
    assert {type(m).__name__ for m in theirs.values()} >= {"FullModule", "IA3Module"}
    assert len(theirs) == 8
    assert fused == 3  # img qkv, txt qkv, linear1


def _draws_as_lycoris(
    tmp_path, monkeypatch, file, algo: str, kinds: set[str], base: list[str], wd=None, resume: bool = True
):
    """The converted preset file's tiny run (trained, resumed bit-exact unless `resume` is False), then
    every kohya layer's module in lycoris-lora's network from the same file (`wd`: more network_args; the
    export loaded) against the trained parts in training from the same generator state: outputs, generator
    state, both kinds of forward seen. (modules, fused layers)"""
    planned, whole, tensors = _run(tmp_path, kinds, base, resume=resume)  # trains, resumes bit-exact

    unet = whole.components.unet
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(whole.components.text_encoders[0]))
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        [clip, nn.Module()],
        tree,
        algo=algo,
        preset=str(file),
        module_dropout=RATE,
        **(wd or {}),
    )
    made.apply_to([clip, nn.Module()], tree, apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    theirs = {m.lora_name: m for m in made.unet_loras}
    fused = 0
    unet.train()
    for path, (parts, order) in layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        if name not in theirs:  # a layer no module adapts
            continue
        module = theirs[name].train()
        assert module.module_dropout == RATE, name
        assert order is None
        fused += len(parts) > 1
        x = torch.randn(3, _base(parts[0]).in_features)
        torch.manual_seed(7)
        with torch.no_grad():
            want = [module(x) for _ in range(8)]
        after = torch.get_rng_state()
        torch.manual_seed(7)
        calls = _call_order(parts, unet)
        with torch.no_grad():
            ours = []
            for _ in range(8):
                out = {id(p): p(x) for p in calls}
                ours.append(torch.cat([out[id(p)] for p in parts], dim=-1))
        assert torch.equal(after, torch.get_rng_state()), name  # one draw per forward of the module
        plain = torch.cat([_base(p)(x) for p in parts], dim=-1)
        skipped = 0
        for got, expected in zip(ours, want):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            skipped += torch.equal(got, plain)
        assert 0 < skipped < 8, name  # both kinds of forward compared
    unet.eval()
    x = torch.randn(1, 16)
    state = torch.get_rng_state()
    with torch.no_grad():
        unet.transformer_blocks[0].attn.to_q(x)
    assert torch.equal(state, torch.get_rng_state())  # outside training: no draw
    return theirs, fused


def test_dylora_and_locon_modules_on_fused_layers_draw_once_each(tmp_path):
    """DyLoRA entries beside a LoCon network's layers (and LoHa's) with module_dropout: every fused Linear's
    module draws one `torch.rand(1)` per training forward (DyLoraModule's before its block draw, which is
    Python's random), its parts skipping together; a tiny run trains and resumes bit-exact."""
    from tests.runtime.test_lycoris_mixed_flow_dylora import FLUX_FILE as DYLORA_FILE

    file = tmp_path / "mixed.toml"
    file.write_text(DYLORA_FILE.replace("OTHER", "loha"), encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE, "schedule.steps=4"]
    plan = _converted(tmp_path, file.name, "locon", base, '"block_size=2"')
    assert plan.adapter.module_dropout == RATE
    _, whole, _ = _run(tmp_path, {"dylora", "loha"}, base)
    unet = whole.components.unet.train()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    fused = 0
    for path, (parts, _) in layers.items():
        if len(parts) == 1:
            continue
        fused += 1
        x = torch.randn(3, _base(parts[0]).in_features)
        torch.manual_seed(7)
        want = [bool(torch.rand(1) < RATE) for _ in range(8)]
        after = torch.get_rng_state()
        torch.manual_seed(7)
        with torch.no_grad():
            ours = [[(p(x), _base(p)(x)) for p in _call_order(parts, unet)] for _ in range(8)]
        assert torch.equal(after, torch.get_rng_state()), path  # one draw per forward of the fused module
        got = [{torch.equal(out, plain) for out, plain in outs} for outs in ours]
        assert all(len(g) == 1 for g in got), path  # the parts skip together
        assert [g == {True} for g in got] == want, path
    assert fused == 3
    unet.eval()


def test_boft_and_glora_entries_draw_once_per_fused_layer(tmp_path, monkeypatch):
    """BOFT q/k/v, GLoRA linear1 and LoHa text q/k/v entries on a LoCon network with module_dropout (was
    DBS578): ButterflyOFTModule's draw shared by its parts (add_module_dropout's FusedSkip), GLoRAModule's
    (runtime/lycoris_glora.py FusedDraws), each as lycoris-lora's network from the same file draws it."""
    from tests.runtime.test_lycoris_flux_boft import MIXED_FILE

    file = tmp_path / "mixed.toml"
    file.write_text(MIXED_FILE, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE, "schedule.steps=4"]
    plan = _converted(tmp_path, file.name, "locon", base)
    assert plan.adapter.module_dropout == RATE
    theirs, fused = _draws_as_lycoris(tmp_path, monkeypatch, file, "locon", {"boft", "glora", "loha"}, base)
    assert {"ButterflyOFTModule", "GLoRAModule", "LohaModule"} <= {type(m).__name__ for m in theirs.values()}
    assert fused == 3


@pytest.mark.parametrize("algo", ["locon", "dylora"])
def test_locon_network_dora_wd_module_dropout_beside_other_kinds_is_lycoris(tmp_path, monkeypatch, algo):
    """A LoCon network's dora_wd with module_dropout beside a preset file's full, LoHa and IA^3 entries on
    Flux (was DBS403 / a spec's DBS267): its LoCon entry's fused txt q/k/v decomposed whole, the parts sharing
    LoConModule's one skip draw (fused_lycoris_dropout.py add_fused_locon_dora_dropout, as on a LoCon network
    alone), the LoHa linear1 LohaModule's, the full q/k/v FullModule's; a DyLoRA network's LoCon entry alike
    (its blocks' own `dora`; GLoRA's takes the same path, runtime/mixed_kinds.py add_module_dropout). Checked
    without a run (each kind's
    saved state is the runs' above): the adapted model, its values moved at random, exported and loaded into
    lycoris-lora 4.1.3's network from the same file; in training from the same generator state every
    module's outputs and the generator left alike, skipped and drawn forwards both met."""
    from safetensors.torch import load_file

    from dbspec.runtime.exports import exports_for_plan
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models

    file = tmp_path / "mixed.toml"
    text = FLUX_FILE.replace("OTHER", "locon").replace("QKV", "full").replace("LINEAR1", "loha")
    file.write_text(text, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    plan = _converted(tmp_path, file.name, algo, base, '"dora_wd=True"')
    a = plan.adapter
    kind, dora = ("lora", True) if algo == "locon" else (algo, False)  # DyLoRA: its blocks' own
    assert (a.kind, a.dora, a.dora_form, a.module_dropout) == (kind, dora, "lycoris", RATE) and a.fused
    assert {b.kind for b in a.blocks} >= {"full", "loha", "ia3"}
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    unet = comps.unet.float()
    torch.manual_seed(1)
    with torch.no_grad():  # every update away from 0, the magnitudes off the base norms
        for name, p in unet.named_parameters():
            if p.requires_grad:
                p.mul_(1 + 0.2 * torch.rand_like(p)) if "dora_scale" in name else p.add_(
                    torch.randn_like(p) * 0.1
                )
    (folder := tmp_path / "export").mkdir()
    tensors = load_file(str(exports_for_plan(plan, folder, comps)[0]))
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [nn.Module(), nn.Module()], tree, algo=algo, preset=str(file),
        module_dropout=RATE, dora_wd="True",
    )  # fmt: skip
    made.apply_to([nn.Module(), nn.Module()], tree, apply_text_encoder=False, apply_unet=True)
    # CLIP's modules not built here; a DyLoRA network's own modules (saved as plain LoRA, drawing Python's
    # random block too: tests/runtime/test_dylora.py) left out
    theirs = {m.lora_name: m for m in made.unet_loras if type(m).__name__ != "DyLoraModule"}
    unet_tensors = {k: v for k, v in tensors.items() if k.split(".")[0] in theirs}
    result = made.load_state_dict(unet_tensors, strict=False)
    assert not result.unexpected_keys, result
    assert not [k for k in result.missing_keys if k.split(".")[0] in theirs], result
    decomposed = {type(m).__name__ for m in theirs.values() if getattr(m, "wd", False)}
    assert decomposed == {"LoConModule", "LohaModule"}
    assert getattr(theirs["lora_unet_double_blocks_0_txt_attn_qkv"], "wd", False)  # a fused LoConModule
    unet.train()
    compared = 0
    for path, (parts, _) in layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        if name not in theirs:
            continue
        module = theirs[name].train()
        x = torch.randn(3, _base(parts[0]).in_features)
        torch.manual_seed(7)
        with torch.no_grad():
            want = [module(x) for _ in range(8)]
        after = torch.get_rng_state()
        torch.manual_seed(7)
        calls = _call_order(parts, unet)
        with torch.no_grad():
            ours = []
            for _ in range(8):
                out = {id(p): p(x) for p in calls}
                ours.append(torch.cat([out[id(p)] for p in parts], dim=-1))
        assert torch.equal(after, torch.get_rng_state()), name  # one draw per forward of the module
        plain = torch.cat([_base(p)(x) for p in parts], dim=-1)
        skipped = 0
        for got, expected in zip(ours, want):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=name)
            skipped += torch.equal(got, plain)
        assert 0 < skipped < 8, name
        compared += 1
    assert compared == len(theirs) == (5 if algo == "dylora" else 8)  # DyLoRA's three left out
