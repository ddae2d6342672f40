"""Every shipped spec compiles, its plan matches a snapshot, and the snapshot says the right things.

Each spec under specs/ (recursively) is compiled for a 24 GB CUDA card with compute capability 8.9 (bf16,
adamw8bit and fp8 allowed), quickstart also for the CPU; cache and output folders go to a temporary folder
and the Hugging Face cache is empty, so hub bases are unresolved. Snapshots are `plan/NAME.TARGET.json`:
the plan's JSON with the repository root written `<repo>` and the temporary folder `<tmp>`.
`plan/quickstart.summary.txt` is what `dbspec plan` prints for quickstart at 120 columns, after `exit: N`.

After an intended change of the plans, rewrite the snapshots and read the diff:
    DBSPEC_UPDATE_GOLDEN=1 pytest tests/golden
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.compiler import schedule as sched
from dbspec.compiler.models import FAMILY_PARAMS
from dbspec.compiler.target import parse_target
from dbspec.families import FAMILIES
from dbspec.frontend import plan_spec
from dbspec.plan.io import plan_to_data
from dbspec.plan.model import Plan

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
SNAPSHOTS = Path(__file__).parent / "plan"
UPDATE_COMMAND = "DBSPEC_UPDATE_GOLDEN=1 pytest tests/golden"
UPDATING = os.environ.get("DBSPEC_UPDATE_GOLDEN") == "1"
TARGETS = {"cuda": "cuda:24GB:8.9", "cpu": "cpu"}
GIB = 2**30
NOT_SHIPPED = {"output", ".dbspec-cache"}  # run outputs and caches that specs/ may hold locally


def shipped_specs() -> list[Path]:
    return sorted(p for p in SPECS.rglob("*.toml") if not NOT_SHIPPED & set(p.relative_to(SPECS).parts))


def case_name(spec: Path, target: str) -> str:
    return f"{spec.relative_to(SPECS).with_suffix('').as_posix().replace('/', '__')}.{target}"


CASES = {case_name(spec, "cuda"): (spec, "cuda") for spec in shipped_specs()}
CASES[case_name(SPECS / "quickstart.toml", "cpu")] = (SPECS / "quickstart.toml", "cpu")


class Compiled:
    """Each case compiled once per session, into its own temporary folder."""

    def __init__(self, tmp_factory: pytest.TempPathFactory):
        self.tmp_factory = tmp_factory
        self.done: dict[str, tuple[Plan, Path]] = {}

    def __call__(self, name: str) -> tuple[Plan, Path]:
        if name not in self.done:
            self.done[name] = self._compile(*CASES[name])
        return self.done[name]

    def _compile(self, spec: Path, target: str) -> tuple[Plan, Path]:
        tmp = self.tmp_factory.mktemp("plan")
        overrides = [
            f"cache.dir={json.dumps(str(tmp / 'cache'))}",
            f"output.dir={json.dumps(str(tmp / 'out'))}",
        ]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_CACHE", str(tmp / "hf-hub"))  # empty: hub bases stay unresolved
            planned = plan_spec(
                spec, parse_target(TARGETS[target]), spec.relative_to(ROOT).as_posix(), overrides
            )
        problems = [f"{d.severity}[{d.code}] {d.path}: {d.message}" for d in planned.diagnostics]
        assert planned.plan is not None and not problems, f"{spec} does not compile cleanly: {problems}"
        return planned.plan, tmp


@pytest.fixture(scope="session")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return Compiled(tmp_path_factory)


def normalised(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "<tmp>").replace(str(ROOT), "<repo>")


def snapshot_text(plan: Plan, tmp: Path) -> str:
    return normalised(json.dumps(plan_to_data(plan), indent=1, ensure_ascii=False), tmp) + "\n"


def check_snapshot(path: Path, actual: str, what: str) -> None:
    if UPDATING:
        path.write_text(actual, encoding="utf-8", newline="\n")
        return
    assert path.exists(), f"no snapshot {path.name}: run `{UPDATE_COMMAND}`"
    assert actual == path.read_text(encoding="utf-8"), (
        f"{what} changed; if the change is intended, run `{UPDATE_COMMAND}` and review the diff of {path}"
    )


# --- snapshots ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_snapshot(name: str, compiled: Compiled) -> None:
    plan, tmp = compiled(name)
    text = snapshot_text(plan, tmp)
    assert "/tmp" not in text.replace("<tmp>", "") and str(ROOT) not in text
    check_snapshot(SNAPSHOTS / f"{name}.json", text, f"the plan of {CASES[name][0].name} ({name})")


def test_no_stale_snapshots() -> None:
    expected = {f"{name}.json" for name in CASES} | {"quickstart.summary.txt"}
    assert {p.name for p in SNAPSHOTS.iterdir()} == expected


def test_quickstart_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dbspec plan` prints the summary tables; paths below the working folder are shown relative to it."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.chdir(tmp_path)
    args = [
        "plan",
        str(SPECS / "quickstart.toml"),
        "--target",
        "cuda:24GB:8.9",
        "--set",
        f"cache.dir={json.dumps(str(tmp_path / 'cache'))}",
        "--set",
        f"output.dir={json.dumps(str(tmp_path / 'out'))}",
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "120"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    actual = normalised(f"exit: {result.exit_code}\n{result.stdout}", tmp_path)
    assert result.exit_code == 0
    assert max(len(line) for line in actual.splitlines() if "│" in line or "━" in line) <= 120
    check_snapshot(SNAPSHOTS / "quickstart.summary.txt", actual, "`dbspec plan specs/quickstart.toml` output")


# --- the snapshots are right --------------------------------------------------------------------------------


def buckets(plan: Plan) -> dict[tuple[int, int], tuple[int, int, int]]:
    return {b.size: (b.instance_samples, b.class_samples, b.batches_per_epoch) for b in plan.buckets}


def components(plan: Plan) -> dict[str, tuple]:
    return {
        c.name: (c.dtype, c.trainable, c.quantized, c.gradient_checkpointing)
        for c in plan.precision.components
    }


def schedule_facts(plan: Plan) -> tuple:
    s = plan.schedule
    return (
        s.total_steps,
        s.epochs,
        s.batches_per_epoch,
        s.steps_per_epoch,
        s.instance_samples_per_epoch,
        s.class_samples_per_epoch,
    )


def expected_lr_points(plan: Plan, steps: tuple[int, ...]) -> list[tuple[int, float]]:
    s = plan.schedule
    return [
        (
            step,
            sched.lr_at(
                step,
                lr=plan.optimizer.lr,
                schedule=s.lr_schedule,
                warmup=s.warmup_steps,
                total=s.total_steps,
                cycles=s.cycles,
            ),
        )
        for step in steps
    ]


def captions(plan: Plan) -> dict[str, set[str]]:
    return {d.name: {img.caption for img in d.images} for d in plan.datasets}


# Bundled images: toy-00/04 128x128, toy-01 160x120, toy-02 120x160, toy-03 144x96, toy-05 96x144 (class-toy
# alike). At 512 px (step 64) they go to 512x512 (two), 576x448, 448x576, 640x384, 384x640.
SD_512_BUCKETS = {(384, 640): 1, (448, 576): 1, (512, 512): 2, (576, 448): 1, (640, 384): 1}


def test_quickstart_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("quickstart.cuda")
    # 6 images x 10 repeats; the 6 class images are balanced to 10 repeats each; batches
    # of 2 never mix buckets
    assert buckets(plan) == {(48, 80): (20, 20, 20), (64, 64): (30, 30, 30), (80, 48): (10, 10, 10)}
    assert schedule_facts(plan) == (60, 1, 60, 60, 60, 60)
    assert [img.repeats for img in plan.datasets[1].images] == [10] * 6
    assert tuple(plan.schedule.checkpoint_steps) == tuple(plan.schedule.validation_steps) == (30, 60)
    assert list(plan.schedule.lr_points) == [(0, 1e-4), (30, 1e-4), (60, 1e-4)]
    assert captions(plan) == {"toy": {"a photo of ohwx toy"}, "toys": {"a photo of a toy"}}
    assert plan.loss.formula == "L = mean_inst[ mse(ε̂, ε) ] + 1·mean_class[ mse(ε̂, ε) ]"
    assert (plan.precision.mixed, plan.precision.tf32) == ("bf16", True)
    assert components(plan) == {
        "unet": ("fp32", "full", "none", False),
        "text_encoder": ("bf16", "frozen", "none", False),
        "vae": ("fp32", "frozen", "none", False),
    }
    # toy images flip (two latents each), class images do not; one text embedding per distinct caption
    assert (plan.cache.latent_misses, plan.cache.text_misses) == (6 * 2 + 6, 2)
    assert plan.validation.size == (64, 64) and plan.validation.inference_steps == 10
    assert plan.memory.fits and plan.memory.total < GIB


def test_quickstart_on_the_cpu_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("quickstart.cpu")
    gpu, _ = compiled("quickstart.cuda")
    assert (plan.precision.mixed, plan.precision.tf32) == ("no", False)
    assert {c.name: c.dtype for c in plan.precision.components} == {
        "unet": "fp32",
        "text_encoder": "fp32",
        "vae": "fp32",
    }
    assert plan.schedule == gpu.schedule and plan.buckets == gpu.buckets
    assert plan.memory.available == 0 and plan.memory.fits


def test_sd15_face_full_prior_is_right(compiled: Compiled) -> None:
    plan, tmp = compiled("sd15-face-full-prior.cuda")
    assert (plan.model.family, plan.model.prediction, plan.model.resolved) == ("sd1", "epsilon", False)
    face, people = plan.datasets
    # 200 class images to generate at 512 px, balanced to the 6 x 100 instance samples: 3 repeats each
    assert people.generate.count == 200 and people.generate.seeds == tuple(range(200))
    assert people.generate.folder == str(SPECS / "data" / "class-person")
    assert {img.repeats for img in people.images} == {3} and people.samples_per_epoch == 600
    expected = {size: (n * 100, 0, n * 50) for size, n in SD_512_BUCKETS.items()}
    expected[(512, 512)] = (200, 600, 400)
    assert buckets(plan) == expected
    assert schedule_facts(plan) == (1000, 2, 600, 600, 600, 600)
    assert tuple(plan.schedule.checkpoint_steps) == (250, 500, 750, 1000)
    assert tuple(plan.schedule.validation_steps) == (200, 400, 600, 800, 1000)
    assert {lr for _, lr in plan.schedule.lr_points} == {1e-6}
    assert captions(plan) == {"face": {"a photo of ohwx person"}, "people": {"a photo of a person"}}
    assert plan.loss.formula == "L = mean_inst[ mse(ε̂, ε) ] + 1·mean_class[ mse(ε̂, ε) ]"
    assert components(plan) == {
        "unet": ("fp32", "full", "none", True),
        "text_encoder": ("fp32", "full", "none", True),
        "vae": ("fp32", "frozen", "none", False),
    }
    assert not plan.cache.text_embeddings and plan.cache.latent_misses == 6 + 200
    trained = FAMILY_PARAMS["sd1"]["unet"] + FAMILY_PARAMS["sd1"]["text_encoder"]
    m = plan.memory
    assert m.weights == 4 * (trained + FAMILY_PARAMS["sd1"]["vae"])  # fp32 masters, fp32 VAE
    assert (m.gradients, m.optimizer) == (4 * trained, 2 * trained)  # adamw8bit: 2 bytes of state
    assert m.fits and 8 * GIB < m.total < 24 * GIB


def test_sd15_subject_lora_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("sd15-subject-lora.cuda")
    assert buckets(plan) == {size: (n * 100, 0, n * 50) for size, n in SD_512_BUCKETS.items()}
    assert schedule_facts(plan) == (800, 3, 300, 300, 600, 0)
    assert list(plan.schedule.lr_points) == [
        (0, 0.0),
        (50, 1e-4),
        (200, 1e-4),
        (400, 1e-4),
        (600, 1e-4),
        (800, 1e-4),
    ]
    assert tuple(plan.schedule.validation_steps) == tuple(range(100, 801, 100))
    assert (plan.adapter.kind, plan.adapter.rank, plan.adapter.alpha) == ("lora", 16, 16.0)
    assert components(plan) == {
        "unet": ("bf16", "lora", "none", True),
        "text_encoder": ("bf16", "frozen", "none", False),
        "vae": ("fp32", "frozen", "none", False),
    }
    assert plan.loss.formula == "L = mean_inst[ mse(ε̂, ε) ]" and plan.loss.prior == "none"
    assert (plan.cache.latent_misses, plan.cache.text_misses) == (12, 1)  # flipped and plain latents
    lora = 16 * 199_296  # rank x (in + out) over SD1.5's attention projections
    assert (plan.memory.gradients, plan.memory.optimizer) == (4 * lora, 8 * lora)
    assert plan.memory.fits and plan.memory.total < 8 * GIB
    assert plan.checkpoints.exports == ("kohya_lora",)


def test_sd21_v_full_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("sd21-v-full.cuda")
    assert (plan.model.family, plan.model.prediction) == ("sd2", "v_prediction")
    # 768 px, step 64: the squares stay square, the four others go to 896x640 / 640x896
    assert buckets(plan) == {(640, 896): (200, 0, 200), (768, 768): (200, 0, 200), (896, 640): (200, 0, 200)}
    assert schedule_facts(plan) == (800, 3, 600, 300, 600, 0)  # batch 1, 2 accumulated per step
    assert tuple(plan.schedule.checkpoint_steps) == (400, 800)
    assert tuple(plan.schedule.validation_steps) == (200, 400, 600, 800)
    assert plan.loss.formula == "L = mean_inst[ minsnr5(t)·mse(v̂, v) ]"
    assert (plan.precision.mixed, plan.precision.reason) == ("bf16", "as the spec says")
    assert components(plan) == {
        "unet": ("fp32", "full", "none", True),
        "text_encoder": ("bf16", "frozen", "none", False),
        "vae": ("fp32", "frozen", "none", False),
    }
    p = FAMILY_PARAMS["sd2"]
    assert plan.memory.weights == 4 * p["unet"] + 2 * p["text_encoder"] + 4 * p["vae"]
    assert (plan.memory.gradients, plan.memory.optimizer) == (4 * p["unet"], 8 * p["unet"])
    assert plan.memory.fits and plan.validation.size == (768, 768)


def test_sdxl_lora_int8_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("sdxl-lora-int8.cuda")
    assert (plan.model.family, plan.model.vae) == ("sdxl", "madebyollin/sdxl-vae-fp16-fix")
    assert plan.model.vae_identity == "hub:madebyollin/sdxl-vae-fp16-fix"
    # 1024 px, step 32: 160x120 -> 1184x864, 144x96 -> 1248x832 (exactly 3:2), and their portraits
    assert buckets(plan) == {
        (832, 1248): (50, 0, 50),
        (864, 1184): (50, 0, 50),
        (1024, 1024): (100, 0, 100),
        (1184, 864): (50, 0, 50),
        (1248, 832): (50, 0, 50),
    }
    assert schedule_facts(plan) == (1000, 4, 300, 300, 300, 0)
    points = plan.schedule.lr_points
    assert list(points) == expected_lr_points(plan, (0, 50, 250, 500, 750, 1000))
    assert points[0] == (0, 0.0) and points[1] == (50, 1e-4) and points[-1] == (1000, 0.0)
    assert components(plan) == {
        "unet": ("bf16", "lora", "int8", True),
        "text_encoder": ("bf16", "frozen", "none", False),
        "text_encoder_2": ("bf16", "frozen", "none", False),
        "vae": ("fp32", "frozen", "none", False),
    }
    assert plan.cache.text_embeddings and (plan.cache.latent_misses, plan.cache.text_misses) == (12, 1)
    assert (plan.validation.scheduler, plan.validation.size) == ("euler", (1024, 1024))
    lora = 32 * 1_451_520
    assert plan.memory.gradients == 4 * lora
    assert plan.memory.weights < 6 * GIB  # an int8 UNet: ~1 byte per weight instead of 2
    assert plan.memory.fits and plan.memory.total < 16 * GIB  # the spec promises a 12-16 GB card


def test_sdxl_pivotal_lora_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("sdxl-pivotal-lora.cuda")
    p = plan.pivotal
    assert p is not None and plan.model.family == "sdxl"
    assert [(t.token, t.added) for t in p.tokens] == [("<ohwx>", ("<ohwx>", "<ohwx>_1"))]
    assert (p.vectors, p.init_word, p.lr, p.stop_step) == (2, "toy", 3e-4, 400)
    assert p.encoders == ("text_encoder", "text_encoder_2") and p.params == 2 * (768 + 1280)
    # the instance caption names the token: its text embedding is computed every step, never cached
    assert all(img.text_key == "" for img in plan.datasets[0].images)
    assert plan.cache.text_misses == 0 and any("pivotal token" in n for n in plan.cache.notes)
    assert components(plan)["text_encoder"] == ("bf16", "frozen", "none", False)  # rows train in fp32


def test_sdxl_refiner_lora_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("sdxl-refiner-lora.cuda")
    assert plan.model.family == "sdxl_refiner" and plan.model.aesthetic_score == 6.0
    # OpenCLIP bigG alone: no first text encoder, and validation refines the first two instance images
    assert [c.name for c in plan.precision.components] == ["unet", "text_encoder_2", "vae"]
    r = plan.validation.refine
    assert r is not None and r.strength == 0.3 and len(r.images) == 2
    assert r.images == tuple(img.path for img in plan.datasets[0].images[:2])
    assert plan.memory.fits and plan.memory.total < 16 * GIB  # the spec promises a 16-24 GB card


def test_flux_dev_lora_int8_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("flux-dev-lora-int8.cuda")
    assert (plan.model.family, plan.model.prediction, plan.model.t5_max_length) == (
        "flux",
        "flow_matching",
        256,
    )
    flow = plan.loss.flow
    assert (flow.timesteps, flow.logit_std, flow.weighting, flow.shift, flow.guidance) == (
        "logit_normal",
        1.0,
        "none",
        0.0,  # the model's (dynamic-shift) scheduler: trained unshifted, as diffusers' script
        1.0,  # loss.flow_guidance replaces the family's 3.5
    )
    assert components(plan) == {
        "unet": ("bf16", "lora", "int8", True),
        "text_encoder": ("bf16", "frozen", "int8", False),
        "text_encoder_2": ("bf16", "frozen", "int8", False),
        "vae": ("fp32", "frozen", "none", False),
    }
    assert plan.cache.text_embeddings and plan.validation.scheduler == "flow_euler"
    assert plan.memory.gradients == 4 * 16 * FAMILIES["flux"].lora_params_per_rank["unet"]
    assert plan.memory.fits and plan.memory.total < 24 * GIB  # the spec promises a 24 GB card


def test_chroma_lora_int8_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("chroma-lora-int8.cuda")
    m = plan.model
    assert (m.family, m.prediction, m.t5_max_length, m.t5_attention_mask) == (
        "chroma",
        "flow_matching",
        256,
        True,
    )
    flow = plan.loss.flow
    assert (flow.timesteps, flow.logit_std, flow.shift, flow.draw, flow.prediction, flow.guidance) == (
        "logit_normal",
        1.0,
        1.0,
        "continuous",
        "raw",
        0.0,  # no guidance embedding: the approximator's guidance input is 0, as kohya's --guidance_scale 0
    )
    assert components(plan) == {  # T5 alone: Chroma has no CLIP
        "unet": ("bf16", "lora", "int8", True),
        "text_encoder": ("bf16", "frozen", "int8", False),
        "vae": ("fp32", "frozen", "none", False),
    }
    assert plan.validation.negative_prompt and plan.validation.guidance == 4.0
    assert plan.memory.gradients == 4 * 16 * FAMILIES["chroma"].lora_params_per_rank["unet"]
    assert plan.memory.fits and plan.memory.total < 24 * GIB  # the spec promises a 24 GB card


def test_sd35_medium_lora_is_right(compiled: Compiled) -> None:
    plan, _ = compiled("sd35-medium-lora.cuda")
    assert (plan.model.family, plan.model.t5_max_length) == ("sd3", 77)
    # SD3.5 medium's own transformer count, not large's (families.py hub_params)
    p = FAMILIES["sd3"].params_of("stabilityai/stable-diffusion-3.5-medium")
    assert p["unet"] == 2_243_171_520 != FAMILY_PARAMS["sd3"]["unet"]
    unet = next(c for c in plan.precision.components if c.name == "unet")
    assert unet.params == p["unet"] and unet.quantized == "none" and unet.gradient_checkpointing
    assert plan.loss.flow.timesteps == "logit_normal" and plan.loss.flow.guidance == 0.0
    assert all(c.quantized == "int8" for c in plan.precision.components if c.name.startswith("text_encoder"))
    assert plan.memory.fits and plan.memory.total < 16 * GIB  # the spec promises a 16 GB card


@pytest.mark.parametrize("name", sorted(CASES))
def test_memory_adds_up(name: str, compiled: Compiled) -> None:
    m = compiled(name)[0].memory
    parts = m.weights + m.gradients + m.optimizer + m.activations + m.ema + m.teacher
    assert min(m.weights, m.gradients, m.optimizer, m.activations) > 0  # every shipped spec trains something
    assert parts < m.total < parts * 1.2 + GIB  # plus the stated overhead, nothing else
    assert m.fits == (m.available == 0 or m.total <= m.available)


def test_every_shipped_spec_has_a_check_above() -> None:
    checked = {
        name.removeprefix("test_").removesuffix("_is_right").replace("_", "-")
        for name in globals()
        if name.endswith("_is_right")
    }
    shipped = {case_name(spec, "cuda").removesuffix(".cuda") for spec in shipped_specs()}
    assert shipped <= checked, f"shipped specs without a test_NAME_is_right: {sorted(shipped - checked)}"
