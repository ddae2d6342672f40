"""A starting LoRA file that covers only some of the run's layers (adapter.init_partial, kohya's
`--network_weights`): kohya's networks (networks.lora, lora_flux, lora_sd3, LyCORIS) load it with
`load_state_dict(weights_sd, False)`, so the layers the file lacks keep the network's fresh init and the
file's other layers are ignored. A tiny Flux run started from half of a kohya export has the file's layers
from the file and every other adapted tensor equal to a run with no starting file (the same seeded init);
it trains and resumes bit-exact. Without init_partial the run refuses the file naming it and the layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.test_flow_init import BASES, _adapter, _export, _loaded, _trained


def _half(export: Path) -> tuple[Path, set[str]]:
    """The export's single-block layers only, plus a layer no run adapts."""
    state = load_file(str(export))
    kept = {k: v for k, v in state.items() if k.startswith("lora_unet_single_blocks_")}
    kept["lora_unet_final_layer_linear.lora_down.weight"] = torch.zeros(4, 8)
    kept["lora_unet_final_layer_linear.lora_up.weight"] = torch.zeros(8, 4)
    half = export.with_name("half.safetensors")
    save_file(kept, str(half))
    return half, {k.split(".")[0] for k in kept}


def _spec(tmp_path: Path, init: str, partial: bool, steps: int = 2) -> Path:
    extra = _adapter("flux", True, init)
    if partial:  # the option sits in [adapter], before [[adapter.blocks]]
        extra = extra.replace("fused_projections = true\n", "fused_projections = true\ninit_partial = true\n")
    extra += "\n[checkpoints]\nevery = 2\n"
    return write_spec(
        tmp_path / ("partial" if init else "fresh"), base=BASES["flux"], steps=steps, extra=extra
    )


def test_a_partial_file_loads_its_layers_and_the_rest_keep_their_init(tmp_path):
    export, first = _export(tmp_path, "flux", True)
    half, modules = _half(export)
    plan = compile_spec(_spec(tmp_path, str(half), True), ["optimizer.lr=1e-2"])
    assert plan.adapter.init_partial and plan.adapter.init_layers == len(modules)
    comps, count = _loaded(plan)
    assert count == len(modules) - 1  # the final layer's module matches no adapted layer: ignored
    fresh = family_runtime("flux").load(
        plan := compile_spec(_spec(tmp_path, "", False), ["optimizer.lr=1e-2"])
    )
    configure_models(plan, fresh, torch.device("cpu"))  # the same seeded init, no starting file
    ours, init, trained = _trained(comps.unet), _trained(fresh.unet), _trained(first.unet)
    from_file = [n for n in ours if n.startswith("single_transformer_blocks.")]
    assert from_file and len(from_file) < len(ours)
    for name in ours:
        want = trained[name] if name in from_file else init[name]
        torch.testing.assert_close(ours[name], want, rtol=0, atol=1e-6, msg=name)


def test_a_run_from_a_partial_file_resumes_bit_exact(tmp_path):
    export, _ = _export(tmp_path, "flux", True)
    half, _ = _half(export)
    spec = _spec(tmp_path, str(half), True, steps=4)
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=2)
    resumed = execute(plan, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_without_init_partial_the_run_refuses_the_partial_file(tmp_path):
    export, _ = _export(tmp_path, "flux", True)
    half, _ = _half(export)
    plan = compile_spec(_spec(tmp_path, str(half), False), ["optimizer.lr=1e-2"])
    with pytest.raises(ValueError, match=r"half\.safetensors.*lora_unet_"):
        _loaded(plan)
