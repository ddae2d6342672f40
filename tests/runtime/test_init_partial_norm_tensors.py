"""kohya --network_weights with a LyCORIS file that a train_norm run saved (LoCon modules beside CLIP's and
the U-Net's NormModule `w_norm` / `b_norm`) started by a run WITHOUT train_norm (issue 12): kohya's
create_network builds no NormModule, and LycorisNetworkKohya.load_weights' load_state_dict(strict=False)
leaves the file's norm tensors unused. The converted run (`init_partial = true`, no norm offsets) plans,
starts every LoCon layer as lycoris-lora 4.1.3's network loaded from the file (outputs to 1e-5), skips the
norm tensors (compiler/init_weights.py reads the file with `norms` under init_partial; runtime/init_weights.py
loads the LoCon tensors alone) and trains a step with the norms untouched; without `init_partial`
the plan refuses the file (DBS357 naming a norm tensor)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules, _named
from tests.runtime.test_lycoris_sd_norm_file import PRESET, _network
from tests.runtime.test_lycoris_sd_norm_file import pipe  # noqa: F401  (the module-scoped fixture)

lycoris_kohya = pytest.importorskip("lycoris.kohya")
ARGS = '--network_dim=4 --network_alpha=2 --network_args "algo=locon" "preset=preset.toml" "conv_dim=4"'


def _plain_network(built, folder, monkeypatch):
    """kohya's network of the converted command: the preset's LoCon, no train_norm; apply_to."""
    kept_lycoris_presets(monkeypatch)
    (folder / "preset.toml").write_text(PRESET, encoding="utf-8")
    named, unet = _named(built.text_encoder), copy.deepcopy(built.unet)
    made = lycoris_kohya.create_network(
        1.0, 4, 2.0, None, named, unet, algo="locon", conv_dim="4", preset=str(folder / "preset.toml")
    )
    made.apply_to(named, unet, True, True)
    return made


def _norms(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{n}.{k}": v.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm))
        for k, v in m.named_parameters(recurse=False)
    }


def test_partial_start_skips_a_files_norm_tensors(pipe, tmp_path, monkeypatch):  # noqa: F811
    from peft.tuners.lora import LoraLayer

    from tests.unit.convert_kit import plan_of

    path = kit.saved_file(_network(pipe, tmp_path, monkeypatch), tmp_path, seed=11, scale=0.1)
    state = load_file(str(path))
    clip_norms = [k for k in state if k.startswith("lora_te_") and k.endswith(".w_norm")]
    assert clip_norms, "the file carries CLIP NormModule tensors"
    locon = {k.split(".")[0] for k in state if k.endswith(".lora_down.weight")}
    outcome = kit._convert(tmp_path, ARGS)
    plan = plan_of(outcome, tmp_path, kit.OVERRIDES)
    a = plan.adapter
    assert a.init_partial and not a.text_encoder_norms and not a.denoiser_norms
    comps, count = _loaded(plan)
    assert count == len(locon)  # every LoCon module, no norm
    lyco_net = _plain_network(pipe, tmp_path, monkeypatch)
    result = lyco_net.load_weights(str(path))  # strict=False: the norm tensors unexpected, unused
    unused = {k.split(".")[0] for k in result["unexpected keys"]}  # LycorisNetworkKohya.load_weights
    assert unused == {k.split(".")[0] for k in state if k.endswith((".w_norm", ".b_norm"))}
    theirs = _lycoris_modules(lyco_net)
    assert not any(type(m).__name__ == "NormModule" for m in theirs.values())
    ours = kit.kohya_layers(comps, LoraLayer, adapter=True)
    assert sorted(ours) == sorted(theirs) == sorted(locon)
    for name, lyco in theirs.items():
        x = kit.sample_input(ours[name].get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(ours[name](x), lyco(x), rtol=0, atol=1e-5, msg=name)

    from tests.unit.convert_kit import out_path

    before = {"te": _norms(pipe.text_encoder), "unet": _norms(pipe.unet)}
    run = execute(compile_spec(out_path(tmp_path), [*kit.OVERRIDES, "schedule.steps=1"]), keep_models=True)
    assert run.status == "finished" and run.steps == 1
    after = {"te": _norms(run.components.text_encoders[0]), "unet": _norms(run.components.unet)}
    for part in ("te", "unet"):
        moved = {k.replace(".base_layer", "") for k in after[part]}
        assert moved == set(before[part]), part
        for key, value in after[part].items():
            assert torch.equal(value.float(), before[part][key.replace(".base_layer", "")].float()), key
    (export,) = Path(run.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    assert not any(k.endswith((".w_norm", ".b_norm")) for k in saved)
    assert kit.trained(saved, state, lambda k: k.endswith(".lora_up.weight")), "the LoCon trained"

    from dbspec.frontend import plan_spec
    from tests.unit.convert_kit import GPU

    strict = plan_spec(out_path(tmp_path), GPU, overrides=[*kit.OVERRIDES, "adapter.init_partial=false"])
    assert strict.plan is None
    (refused,) = [d for d in strict.diagnostics if d.code == "DBS357"]
    assert "_norm" in refused.message and "lora_te_" in refused.message
