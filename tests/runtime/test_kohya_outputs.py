"""kohya's output options on tiny real runs: pickle exports (`checkpoints.export_format`, kohya's
save_model_as "ckpt" / "pt") hold exactly the safetensors export's tensors in kohya's structure, and
`checkpoints.keep_state` (kohya's save_last_n_*_state) prunes the older kept checkpoints to their weights
while `--resume` continues from the newest checkpoint that still has its training state."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dbspec.runtime.checkpoints import STATE_FILE, latest_checkpoint
from dbspec.runtime.execute import RunError, execute
from dbspec.runtime.exports import exports_for_plan
from dbspec.runtime.models import load_components
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.shared import copy_of_run

LORA = '[adapter]\nkind = "lora"\nrank = 2\nalpha = 1\n[train]\ntext_encoder = true\n'
# kohya's LoRA key: lora_unet_* / lora_te_* module name, then one of its three tensors
KOHYA_KEY = re.compile(r"^lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _pickle(path: Path):
    """Loaded as a careful client would: weights_only refuses anything but tensors and plain data."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def _two_runs(tmp_path: Path, extra: str, fmt: str) -> tuple:
    """A tiny run with `fmt` exports (models kept), and the safetensors exports of its trained models written
    by the same plan's writers with `export_format` "safetensors" (as the run's end writes them): (plan,
    folder) of each."""
    spec = write_spec(tmp_path, steps=2, extra=extra)

    def plan(export_format: str):
        sets = [
            f"output.dir={export_format}",
            "output.name=toy",
            f"checkpoints.export_format={export_format!r}",
        ]
        return compile_spec(spec, sets)

    pk_plan, st_plan = plan(fmt), plan("safetensors")
    result = execute(pk_plan, keep_models=True)
    assert result.status == "finished"
    st_final = tmp_path / "st"
    st_final.mkdir()
    assert exports_for_plan(st_plan, st_final, result.components)
    return [(st_plan, st_final), (pk_plan, Path(result.final))]


def test_single_file_ckpt_is_kohyas_checkpoint_dict_of_the_safetensors_tensors(tmp_path):
    extra = '[checkpoints]\nexports = ["single_file"]\nsave_precision = "fp16"\n'
    (_, st_final), (plan, pk_final) = _two_runs(tmp_path, extra, "ckpt")
    assert sorted(p.name for p in pk_final.glob("toy.*")) == ["toy.ckpt"]
    saved = _pickle(pk_final / "toy.ckpt")
    # model_util.save_stable_diffusion_checkpoint: {"state_dict", "epoch", "global_step"}; at the end of
    # training kohya passes its epoch loop's variable (the last epoch's 0-based index) and the steps run
    assert set(saved) == {"state_dict", "epoch", "global_step"}
    s = plan.schedule
    assert saved["global_step"] == s.total_steps and saved["epoch"] == s.epochs - 1
    _same_tensors(saved["state_dict"], load_file(str(st_final / "toy.safetensors")))
    assert saved["state_dict"]["model.diffusion_model.out.2.weight"].dtype == torch.float16


def test_single_file_ckpt_loads_in_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline

    from dbspec.runtime import tiny

    spec = write_spec(
        tmp_path, steps=1, extra='[checkpoints]\nexports = ["single_file"]\nexport_format = "ckpt"\n'
    )
    result = execute(compile_spec(spec, ["output.name=toy"]))
    config = tiny.materialize("builtin:tiny-sd1", tmp_path / "tiny-sd1")
    pipe = StableDiffusionPipeline.from_single_file(
        str(Path(result.final) / "toy.ckpt"), config=str(config), safety_checker=None
    )
    trained = load_file(str(Path(result.final) / "unet" / "diffusion_pytorch_model.safetensors"))
    loaded = pipe.unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())


@pytest.mark.parametrize("fmt", ["pt", "ckpt"])
def test_kohya_lora_pickle_is_the_bare_state_dict_of_the_safetensors_export(tmp_path, fmt):
    extra = LORA + '[checkpoints]\nexports = ["kohya_lora"]\nsave_precision = "bf16"\n'
    (_, st_final), (_, pk_final) = _two_runs(tmp_path, extra, fmt)
    assert sorted(p.name for p in pk_final.glob("toy.*")) == [f"toy.kohya.{fmt}"]
    saved = _pickle(pk_final / f"toy.kohya.{fmt}")  # networks/lora.py save_weights: torch.save(state_dict)
    with safe_open(str(st_final / "toy.kohya.safetensors"), "pt") as handle:
        assert handle.metadata()["ss_network_module"] == "networks.lora"  # the pickle has no metadata
    reference = load_file(str(st_final / "toy.kohya.safetensors"))
    _same_tensors(saved, reference)
    assert all(KOHYA_KEY.match(key) for key in saved), [k for k in saved if not KOHYA_KEY.match(k)][:3]
    assert any(k.startswith("lora_te_") for k in saved) and any(k.startswith("lora_unet_") for k in saved)
    modules = {key.split(".", 1)[0] for key in saved}  # kohya module names hold no dots
    for module in modules:  # each module: down, up and alpha (fp32, the exact scale)
        assert saved[f"{module}.alpha"].dtype == torch.float32
        assert saved[f"{module}.lora_down.weight"].dtype == torch.bfloat16


def test_lycoris_layouts_follow_the_export_format(tmp_path):
    extra = '[adapter]\nkind = "loha"\nrank = 2\nalpha = 1\n[checkpoints]\nexports = ["kohya_lora"]\n'
    spec = write_spec(tmp_path, steps=1, extra=extra)
    st_plan = compile_spec(spec, ["output.name=toy"])
    pk_plan = compile_spec(spec, ["output.name=toy", 'checkpoints.export_format="pt"'])
    comps = load_components(st_plan)
    configure_models(st_plan, comps, torch.device("cpu"))
    (st,) = exports_for_plan(st_plan, tmp_path / "st", comps)
    (pk,) = exports_for_plan(pk_plan, tmp_path / "pk", comps)
    assert pk.name == "toy.kohya.pt"
    saved = _pickle(pk)
    assert any(key.endswith(".hada_w1_a") for key in saved)
    _same_tensors(saved, load_file(str(st)))


# --- checkpoints.keep_state -----------------------------------------------------------------------------
KEEP = "[checkpoints]\nevery = 1\nkeep = 4\nkeep_state = 2\n"


def _held(out: Path) -> tuple[list[int], list[int]]:
    """The kept checkpoint steps, and those of them that still hold their training state."""
    folders = sorted((out / "checkpoints").glob("step-*"))
    for folder in folders:  # every kept checkpoint keeps its weights, with or without state
        assert (folder / "pytorch_lora_weights.safetensors").is_file(), folder
    steps = [int(f.name.split("-")[1]) for f in folders]
    return steps, [s for s, f in zip(steps, folders) if (f / STATE_FILE).is_file()]


def _kept_run(tmp_path: Path) -> tuple[Path, list[float]]:
    """(the `final` folder, the losses) of an uninterrupted 6-step run keeping states, in
    `tmp_path / "whole"`: made once per test process and copied (both tests below read it)."""

    def run(folder: Path) -> tuple[str, list[float]]:
        result = execute(compile_spec(write_spec(folder, steps=6, extra=LORA + KEEP)))
        return str(Path(result.final).relative_to(folder)), result.losses

    folder, (final, losses) = copy_of_run(tmp_path, tmp_path / "whole", "kohya-outputs-keep-state", run)
    return folder / final, losses


def test_keep_state_prunes_older_kept_checkpoints_to_their_weights(tmp_path):
    final, _ = _kept_run(tmp_path)
    assert _held(final.parent) == ([3, 4, 5, 6], [5, 6])


def test_resume_continues_from_the_newest_checkpoint_with_state(tmp_path):
    whole_final, whole_losses = _kept_run(tmp_path)
    spec = write_spec(tmp_path, steps=6, extra=LORA + KEEP)
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=4)
    out = Path(plan.checkpoints.dir)
    assert first.status == "interrupted" and _held(out) == ([1, 2, 3, 4], [3, 4])
    # the newest checkpoint lost its state (a user's doing; dbspec never prunes the newest): --resume skips it
    # and continues from step 3, the newest that can be continued; the run ends as an uninterrupted one
    (out / "checkpoints" / "step-000004" / STATE_FILE).unlink()
    assert latest_checkpoint(out) == out / "checkpoints" / "step-000003"
    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 6
    assert first.losses[:3] + second.losses == whole_losses
    a = load_file(str(whole_final / "pytorch_lora_weights.safetensors"))
    b = load_file(str(Path(second.final) / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _held(out) == ([3, 4, 5, 6], [5, 6])


def test_resume_without_any_state_left_says_why(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=LORA + KEEP)
    plan = compile_spec(spec)
    execute(plan, stop_after=2)
    out = Path(plan.checkpoints.dir)
    for state in (out / "checkpoints").glob(f"step-*/{STATE_FILE}"):
        state.unlink()
    with pytest.raises(RunError) as info:
        execute(plan, resume=True)
    message = info.value.message
    assert "none holds its training state" in message and "--overwrite" in message, message
    assert "step-000002" in message
    shutil.rmtree(out / "checkpoints")  # no checkpoint at all: --resume starts afresh, as before
    assert execute(plan, resume=True).status == "finished"
