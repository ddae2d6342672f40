"""Output preservation (`datasets[].preserve_output`, kohya's diff_output_preservation): the flagged rows of a
batch take as target the base model's own prediction on their noisy input, timestep and text, here against
the base model loaded again without adapters (not peft's switch); the other rows keep theirs; every adapter
kind is switched off and back on (dropout draws nothing); a run with a flagged dataset resumes bit-exact."""

from __future__ import annotations

import attrs
import pytest
import torch

from dbspec.runtime.adapters import adapters_disabled, is_adapter_weight
from dbspec.runtime.data import Sample
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.models import load_components
from dbspec.runtime.prepare import configure_models
from dbspec.runtime.step import Parts, preserved_target, run_batch, text_for
from tests.runtime.runspec import compile_spec, make_plan, write_spec

KEEP = """
[[datasets]]
name = "keep"
path = "data/class-toy"
prompt = "a photo of a toy"
resolution = 64
preserve_output = true
"""
ADAPTERS = {
    "lora": 'kind = "lora"\nrank = 4\nrank_dropout = 0.5\nmodule_dropout = 0.5\n',
    "dora": 'kind = "lora"\nrank = 4\ndora = true\n',
    "locon": 'kind = "lora"\nrank = 4\nconv_rank = 2\nconv_alpha = 1.0\n',
    "loha": 'kind = "loha"\nrank = 4\nrank_dropout = 0.5\nmodule_dropout = 0.5\n',
    "lokr": 'kind = "lokr"\nrank = 4\n',
}


def _plan(tmp_path, base: str = "builtin:tiny-sd1", adapter: str = "lora", loss: str = ""):
    return make_plan(tmp_path, base=base, steps=2, extra=KEEP + "[adapter]\n" + ADAPTERS[adapter] + loss)


def _parts(plan, seed: int = 0, moved: bool = True) -> Parts:
    """The trained model's parts, its adapter weights moved away from their start (so the adapter changes
    the output) unless `moved` is false."""
    device = torch.device("cpu")
    comps = load_components(plan)
    configure_models(plan, comps, device)
    comps.unet.train()  # as in a training step: adapter dropout would draw
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in comps.unet.named_parameters():
            if moved and is_adapter_weight(name):
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return Parts(
        plan=plan,
        unet=comps.unet,
        vae=comps.vae,
        text_encoders=comps.text_encoders,
        tokenizers=comps.tokenizers,
        noise_scheduler=comps.noise_scheduler,
        latent_cache=None,
        text_cache=None,
        device=device,
        generator=torch.Generator().manual_seed(0),
    )


def _mixed_batch(plan) -> tuple[Sample, ...]:
    """instance, kept, instance, kept: one bucket, alternating datasets."""
    rows = []
    for name in ("toy", "keep"):
        di = next(i for i, d in enumerate(plan.datasets) if d.name == name)
        images = [img for img in plan.datasets[di].images if img.bucket == (64, 64)][:2]
        rows.append([Sample(dataset=di, image=k, role="instance", flip=False, aug_seed=k, img=img)
                     for k, img in enumerate(images)])  # fmt: skip
    return (rows[0][0], rows[1][0], rows[0][1], rows[1][1])


def _inputs(parts: Parts, batch, channels: int):
    g = torch.Generator().manual_seed(7)
    noisy = torch.randn(len(batch), channels, 8, 8, generator=g)
    timesteps = torch.rand(len(batch), generator=g) * 998 + 1  # continuous: off any scheduler table
    text = {k: v.detach() for k, v in text_for(parts, batch).items()}
    return noisy, timesteps, text, torch.randn(len(batch), channels, 8, 8, generator=g)


def _base_output(plan, noisy, timesteps, text, samples) -> torch.Tensor:
    """The base model's prediction, from the base model loaded again (no adapter ever injected)."""
    family = family_runtime(plan.model.family)
    base = load_components(plan).unet.eval()
    with torch.no_grad():
        return family.predict(base, noisy, timesteps, text, family.conditioning(text, samples, "cpu")).float()


@pytest.mark.parametrize("adapter", ["lora", "dora", "locon", "loha", "lokr"])
def test_flagged_rows_take_the_base_models_output_sd1(tmp_path, adapter):
    plan = _plan(tmp_path, adapter=adapter)
    assert [d.preserve_output for d in plan.datasets] == [False, True]
    parts = _parts(plan)
    batch = _mixed_batch(plan)
    noisy, timesteps, text, target = _inputs(parts, batch, 4)
    trainable = {n: p.requires_grad for n, p in parts.unet.named_parameters()}
    rng = torch.get_rng_state()
    got = preserved_target(parts, batch, target, noisy, timesteps, text)
    assert torch.equal(torch.get_rng_state(), rng)  # no adapter dropout drawn for the base forward
    assert {n: p.requires_grad for n, p in parts.unet.named_parameters()} == trainable
    rows = [1, 3]
    expected = _base_output(plan, noisy[rows], timesteps[rows], {k: v[rows] for k, v in text.items()},
                            [batch[i] for i in rows])  # fmt: skip
    torch.testing.assert_close(got[rows], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[[0, 2]], target[[0, 2]])  # instance rows keep their target
    # the adapter is back on: the trained model's output on those rows differs from the base's, and its
    # dropout (lora, loha) draws again
    family = family_runtime(plan.model.family)
    sub = {k: v[rows] for k, v in text.items()}
    with torch.no_grad():
        adapted = family.predict(parts.unet, noisy[rows], timesteps[rows], sub,
                                 family.conditioning(sub, [batch[i] for i in rows], "cpu"))  # fmt: skip
    assert (adapted - expected).abs().max() > 1e-3
    if adapter in ("lora", "loha"):
        assert not torch.equal(torch.get_rng_state(), rng)
    if adapter == "locon":
        assert plan.adapter.conv_rank == 2 and plan.adapter.conv_targets


def test_flagged_rows_take_the_base_models_output_in_the_losss_form_flux(tmp_path):
    """Flux with kohya's sigma_scaled prediction: the loss compares x_t − σ·v̂, so the target is x_t − σ·v̂_base
    (σ = t / 1000 for continuous timesteps), written out here."""
    plan = _plan(tmp_path, base="builtin:tiny-flux", loss='[loss]\nflow_prediction = "sigma_scaled"\n')
    parts = _parts(plan)
    batch = _mixed_batch(plan)
    channels = parts.unet.config.in_channels // 4  # packed 2x2 latents
    noisy, timesteps, text, target = _inputs(parts, batch, channels)
    got = preserved_target(parts, batch, target, noisy, timesteps, text)
    rows = [1, 3]
    v = _base_output(plan, noisy[rows], timesteps[rows], {k: v[rows] for k, v in text.items()},
                     [batch[i] for i in rows])  # fmt: skip
    sigma = (timesteps[rows] / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(got[rows], noisy[rows] - sigma * v, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[[0, 2]], target[[0, 2]])


def test_adapters_come_back_on_after_an_exception(tmp_path):
    parts = _parts(_plan(tmp_path, adapter="loha"))
    before = {n: p.requires_grad for n, p in parts.unet.named_parameters()}
    with pytest.raises(ValueError), adapters_disabled(parts.unet):
        raise ValueError("inside")
    layers = [m for m in parts.unet.modules() if hasattr(m, "disable_adapters") and hasattr(m, "base_layer")]
    assert layers and not any(m.disable_adapters for m in layers)
    assert {n: p.requires_grad for n, p in parts.unet.named_parameters()} == before


def test_flagged_samples_start_at_zero_loss(tmp_path):
    """At the start the adapter changes nothing (LoRA's up weights are zero): the kept rows' loss is exactly
    0, the instance rows' is not."""
    plan = _plan(tmp_path, adapter="dora")
    parts = _parts(plan, moved=False)
    batch = _mixed_batch(plan)
    assert float(run_batch(parts, batch[1::2]).loss) == 0.0
    assert float(run_batch(parts, batch[0::2]).loss) > 0.0


@pytest.mark.parametrize("base", ["builtin:tiny-sd1", "builtin:tiny-sd3"])
def test_a_run_with_a_preserved_dataset_resumes_bit_exact(tmp_path, base):
    """A run with a preserved dataset trains and its losses differ from the same run without preservation;
    [builtin:tiny-sd1]'s also resumes bit-exact. tiny-sd3's saves the same kinds of state (the LoRA
    adapter's, the optimizer's, the run's generator streams and the sampler's; preservation keeps none of
    its own), which test_sd3.py's test_interrupted_then_resumed_lora_run_is_bit_identical resumes on SD3,
    so it is not resumed."""
    extra = KEEP + "[adapter]\n" + ADAPTERS["lora"] + "[checkpoints]\nevery = 2\n"
    spec = write_spec(tmp_path, base=base, steps=4, extra=extra)
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    assert whole.status == "finished" and whole.steps == 4
    if base == "builtin:tiny-sd1":
        plan = compile_spec(spec, ["output.dir=parts"])
        first = execute(plan, stop_after=2)
        assert first.status == "interrupted"
        second = execute(plan, resume=True)
        assert second.status == "finished" and first.losses + second.losses == whole.losses
    plain = execute(compile_spec(spec, ["output.dir=plain", "datasets.1.preserve_output=false"]))
    assert plain.losses != whole.losses


def test_a_text_encoder_only_adapter_targets_the_denoisers_own_prediction(tmp_path):
    """With the adapter on the text encoder only (DBS609; kohya's diff_output_preservation with
    --network_train_text_encoder_only) the kept rows' target is the denoiser's own prediction on the captions
    the adapted text encoder encoded, made by a second no-grad forward over those rows as kohya's: their loss
    is 0 with the text encoder's adapter moved, their gradient none; the instance rows train as usual."""
    te_only = KEEP + "[adapter]\n" + ADAPTERS["lora"] + "[train]\ndenoiser = false\ntext_encoder = true\n"
    plan = make_plan(tmp_path, steps=2, extra=te_only)
    assert not plan.train_denoiser and plan.train_text_encoder
    parts = attrs.evolve(_parts(plan, moved=False), text_trains=True)  # the captions encoded with grad
    encoder = parts.text_encoders[0]
    with torch.no_grad():  # the text encoder's adapter moved: the captions' encoding differs from the base's
        for name, param in encoder.named_parameters():
            if is_adapter_weight(name):
                param.add_(0.2 * torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    batch = _mixed_batch(plan)
    kept = run_batch(parts, batch[1::2])
    assert float(kept.loss.detach()) == 0.0
    kept.loss.backward()
    grads = [p.grad for n, p in encoder.named_parameters() if is_adapter_weight(n) and p.requires_grad]
    assert grads and all(g is None or not g.any() for g in grads)
    trained = run_batch(parts, batch[0::2])
    assert float(trained.loss.detach()) > 0.0
    trained.loss.backward()
    assert any(
        p.grad is not None and p.grad.any() for n, p in encoder.named_parameters() if is_adapter_weight(n)
    )


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_lycoris_modules_at_their_start_add_nothing_at_either_multiplier(layer):
    """The converter's premise for kohya's diff_output_preservation at unet_lr 0
    (convert/kohya/subsets.py held_start_refusal): lycoris-lora 4.1.3's modules, built as lycoris.kohya
    builds them and never stepped, leave the layer's output bit for bit at multiplier 1 (the prediction) and
    0 (kohya's switched-off target), so that target is the prediction itself; DoRA (weight_decompose) at 1
    only to rounding (DBS404)."""
    from lycoris.wrapper import network_module_dict

    torch.manual_seed(0)
    make = (
        (lambda: torch.nn.Linear(32, 32))
        if layer == "linear"
        else (lambda: torch.nn.Conv2d(32, 32, 3, padding=1))
    )
    x = torch.randn(2, 32) if layer == "linear" else torch.randn(2, 32, 6, 6)
    cases = [
        (algo, {}) for algo in ("locon", "loha", "lokr", "dylora", "glora", "full", "diag-oft", "boft", "ia3")
    ]
    cases += [
        ("locon", {"use_scalar": True}),
        ("loha", {"use_tucker": True}),
        ("lokr", {"bypass_mode": True}),
    ]
    cases += [(algo, {"weight_decompose": True}) for algo in ("locon", "loha", "lokr")]
    for algo, options in cases:
        org = make()
        with torch.no_grad():
            base = org(x)
        alpha = 0 if algo in ("diag-oft", "boft") else 1
        module = network_module_dict[algo]("m", org, 1.0, lora_dim=4, alpha=alpha, **options)
        module.apply_to()
        outputs = []
        for multiplier in (1.0, 0.0):
            module.multiplier = multiplier
            with torch.no_grad():
                outputs.append(org(x))
        assert torch.equal(outputs[1], base), (algo, options)
        if options.get("weight_decompose"):
            torch.testing.assert_close(outputs[0], base, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(outputs[0], base), (algo, options)
