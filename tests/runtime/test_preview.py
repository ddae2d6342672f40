"""Live validation previews: Tiny AutoEncoder frames at the planned sampling steps, the animated WebP, the
webhook (a real HTTP server on 127.0.0.1) and a webhook that fails without stopping the run."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dbspec.compiler.preview import preview_sampling_steps
from dbspec.plan.model import PreviewPlan, StepRange, ValidationPlan
from dbspec.runtime.execute import execute
from dbspec.runtime.generate import make_scheduler, validate
from dbspec.runtime.tiny import build_pipeline, build_preview_vae
from tests.runtime.runspec import make_plan

TINY_TAESD = "builtin:tiny-taesd"


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _preview(every: int, steps: int, webhook: str = "", timeout: float = 2.0) -> PreviewPlan:
    return PreviewPlan(
        every=every,
        sampling_steps=preview_sampling_steps(every, steps),
        model=TINY_TAESD,
        source="builtin",
        path="",
        resolved=True,
        revision="",
        webhook=webhook,
        webhook_timeout=timeout,
    )


def _validation(preview: PreviewPlan | None, steps: int = 5) -> ValidationPlan:
    return ValidationPlan(
        prompts=("a photo of ohwx dog", "a dog on a beach"),
        negative_prompt="",
        steps=StepRange(every=0, end=10),
        scheduler="ddim",
        inference_steps=steps,
        guidance=5.0,
        images_per_prompt=2,
        seed=3,
        size=(32, 32),
        preview=preview,
    )


def _latents_at_every_step(pipe, plan: ValidationPlan, prompt: str, image_index: int) -> list[torch.Tensor]:
    """The latents after each sampling step, recorded by a callback of our own (independent of preview.py)."""
    recorded: list[torch.Tensor] = []

    def record(pipeline, step_index, timestep, kwargs):
        recorded.append(kwargs["latents"].detach().clone())
        return kwargs

    original = pipe.scheduler
    pipe.scheduler = make_scheduler(plan.scheduler, original.config)
    try:
        with torch.no_grad():
            pipe(
                prompt=prompt,
                num_inference_steps=plan.inference_steps,
                guidance_scale=plan.guidance,
                height=plan.size[1],
                width=plan.size[0],
                generator=torch.Generator("cpu").manual_seed(plan.seed + image_index),
                callback_on_step_end=record,
            )
    finally:
        pipe.scheduler = original
    return recorded


def _decode(vae, latents: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        pixels = vae.decode(latents).sample[0]
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_previews_are_the_tiny_autoencoder_decode_of_the_latents_at_the_planned_steps(pipe, tmp_path):
    plan = _validation(_preview(every=2, steps=5))
    assert plan.preview.sampling_steps == (2, 4)
    paths = validate(pipe, plan, tmp_path, step=7)
    previews = tmp_path / "samples" / "step-000007" / "previews"
    names = sorted(p.name for p in previews.iterdir())
    assert names == sorted(
        [f"p{p:02d}-i{i:02d}-s{s:03d}.png" for p in range(2) for i in range(2) for s in (2, 4)]
        + [f"p{p:02d}-i{i:02d}.webp" for p in range(2) for i in range(2)]
    )
    vae = build_preview_vae(TINY_TAESD)
    for prompt_index, prompt in enumerate(plan.prompts):
        for image_index in range(2):
            latents = _latents_at_every_step(pipe, plan, prompt, image_index)
            assert len(latents) == 5
            for sampling_step in (2, 4):
                frame = np.asarray(
                    Image.open(previews / f"p{prompt_index:02d}-i{image_index:02d}-s{sampling_step:03d}.png")
                )
                expected = _decode(vae, latents[sampling_step - 1])
                assert frame.std() > 5  # a real picture, not a constant
                np.testing.assert_array_equal(frame, expected)
            first, second = (
                np.asarray(Image.open(previews / f"p{prompt_index:02d}-i{image_index:02d}-s{s:03d}.png"))
                for s in (2, 4)
            )
            assert not np.array_equal(first, second)  # the frames follow the denoising
    # The animation: the two frames then the final image, which the callback left unchanged.
    with Image.open(previews / "p01-i01.webp") as animation:
        assert animation.n_frames == 3
        animation.seek(2)
        last = np.asarray(animation.convert("RGB"))
    final = np.asarray(Image.open(tmp_path / "samples" / "step-000007" / "p01-i01.png").convert("RGB"))
    np.testing.assert_array_equal(last, final)
    without = validate(pipe, _validation(None), tmp_path / "plain", step=7)
    for a, b in zip(paths, without):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert not (tmp_path / "plain" / "samples" / "step-000007" / "previews").exists()


class _Receiver(http.server.BaseHTTPRequestHandler):
    status = 200
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"content_type": self.headers["Content-Type"], **json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def receiver():
    handler = type("Handler", (_Receiver,), {"received": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_every_preview_is_posted_to_the_webhook(pipe, tmp_path, receiver):
    handler, url = receiver
    plan = _validation(_preview(every=2, steps=4, webhook=url), steps=4)
    validate(pipe, plan, tmp_path, step=3)
    got = handler.received
    assert [(r["prompt_index"], r["image_index"], r["sampling_step"]) for r in got] == [
        (p, i, s) for p in range(2) for i in range(2) for s in (2, 4)
    ]
    previews = tmp_path / "samples" / "step-000003" / "previews"
    for row in got:
        assert row["content_type"] == "application/json"
        assert row["event"] == "dbspec.preview" and row["train_step"] == 3 and row["sampling_steps"] == 4
        assert row["prompt"] == plan.prompts[row["prompt_index"]]
        assert base64.b64decode(row["image_png_base64"]) == (previews / row["file"]).read_bytes()


def test_a_webhook_answering_errors_is_logged_once_per_validation(pipe, tmp_path, receiver, caplog):
    handler, url = receiver
    handler.status = 500
    with caplog.at_level(logging.WARNING, logger="dbspec.runtime.preview"):
        validate(pipe, _validation(_preview(every=1, steps=3, webhook=url), steps=3), tmp_path, step=1)
    assert len(handler.received) == 1  # posting stops after the first failure in a validation
    failures = [r for r in caplog.records if "webhook" in r.getMessage()]
    assert len(failures) == 1 and "500" in failures[0].getMessage()
    assert len(list((tmp_path / "samples" / "step-000001" / "previews").glob("*.png"))) == 2 * 2 * 3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_webhook_never_stops_the_run(tmp_path, caplog):
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    plan = make_plan(
        tmp_path,
        steps=2,
        extra=f"""
[validation]
prompts = ["a photo of ohwx toy"]
every = 1
steps = 3
preview_every = 2
preview_model = "{TINY_TAESD}"
webhook = "{url}"
webhook_timeout = 0.5
""",
    )
    assert plan.validation.preview is not None and plan.validation.preview.sampling_steps == (2,)
    with caplog.at_level(logging.WARNING, logger="dbspec.runtime.preview"):
        result = execute(plan)
    assert result.status == "finished" and result.steps == 2
    out = Path(plan.checkpoints.dir)
    for step in (1, 2):
        previews = out / "samples" / f"step-{step:06d}" / "previews"
        assert sorted(p.name for p in previews.iterdir()) == ["p00-i00-s002.png", "p00-i00.webp"]
    failures = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert len(failures) == 2 and all(url in message for message in failures)  # one per validation


def test_a_preview_model_that_cannot_load_leaves_validation_running(pipe, tmp_path, caplog):
    missing = attrs_evolve(
        _preview(every=1, steps=2), source="diffusers", path=str(tmp_path / "gone"), model="gone"
    )
    with caplog.at_level(logging.WARNING, logger="dbspec.runtime.preview"):
        paths = validate(pipe, _validation(missing, steps=2), tmp_path, step=1)
    assert len(paths) == 5 and not (tmp_path / "samples" / "step-000001" / "previews").exists()
    assert any("live previews off" in r.getMessage() for r in caplog.records)


def attrs_evolve(value, **changes):
    import attrs

    return attrs.evolve(value, **changes)


def test_previews_on_sdxl(tmp_path):
    """SDXL's pipeline hands the same latents to the callback: frames at every planned step."""
    pipe = build_pipeline("builtin:tiny-sdxl")
    plan = attrs_evolve(
        _validation(_preview(every=1, steps=2), steps=2), prompts=("a dog",), images_per_prompt=1
    )
    validate(pipe, plan, tmp_path, step=1)
    previews = tmp_path / "samples" / "step-000001" / "previews"
    assert sorted(p.name for p in previews.iterdir()) == [
        "p00-i00-s001.png",
        "p00-i00-s002.png",
        "p00-i00.webp",
    ]
