"""dbspec.compiler.memory: LoRA counts by hand, a hand-worked estimate, and the published VRAM figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from convert_kit import plan_at

from dbspec.families import family_spec
from dbspec.compiler.memory import (
    activation_bytes,
    estimate_memory,
    lora_param_count,
)
from dbspec.plan.model import ComponentPlan

GIB = 2**30
# Real parameter counts (diffusers checkpoints).
SD15 = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
SDXL = {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863}


def comp(name, dtype, trainable="frozen", params=0, quantized="none"):
    return ComponentPlan(name=name, dtype=dtype, trainable=trainable, quantized=quantized, params=params)


def estimate(**overrides):
    args = dict(
        optimizer="adamw",
        momentum=0.0,
        batch_size=1,
        max_bucket=(512, 512),
        family="sd1",
        gradient_checkpointing=True,
        mixed="bf16",
        ema=False,
        ema_offload=False,
        teacher=(),
        available=0,
    )
    args.update(overrides)
    return estimate_memory(**args)


# --- LoRA parameter counts ------------------------------------------------------------------------------


def test_lora_count_by_hand():
    shapes = {
        "down.attn1.to_q": (320, 320),  # 4 * (320 + 320) = 2560
        "down.attn1.to_k": (320, 320),  # 2560
        "down.attn2.to_k": (320, 768),  # 4 * (768 + 320) = 4352
        "down.attn1.to_out.0": (320, 320),  # 2560
        "down.attn1.to_out.1": (320, 320),  # a Dropout's name in real models; not a target here
        "down.attn1.x_to_q": (10, 10),  # "to_q" only as a substring: peft's suffix rule skips it
        "to_q": (8, 4),  # exact name: 4 * 12 = 48
        "down.ff.net.0.proj": (2560, 320),
    }
    assert lora_param_count(shapes, ("to_q", "to_k", "to_out.0"), 4) == 2560 * 3 + 4352 + 48
    assert lora_param_count(shapes, ("ff.net.0.proj",), 8) == 8 * (2560 + 320)
    assert lora_param_count(shapes, (), 16) == 0
    assert lora_param_count(shapes, ("to_q",), 0) == 0
    with pytest.raises(ValueError):
        lora_param_count(shapes, ("to_q",), -1)


def attention_shapes(blocks, depth, context_dim) -> dict[str, tuple[int, int]]:
    """(out, in) of every attention projection of a UNet, written out from its architecture.

    blocks: (prefix, width, attentions); depth: transformer blocks per attention at each width.
    """
    shapes = {}
    for prefix, dim, count in blocks:
        for i in range(count):
            for j in range(depth[dim]):
                block = f"{prefix}.attentions.{i}.transformer_blocks.{j}"
                for attn, context in (("attn1", dim), ("attn2", context_dim)):  # self- and cross-attention
                    shapes[f"{block}.{attn}.to_q"] = (dim, dim)
                    shapes[f"{block}.{attn}.to_k"] = (dim, context)
                    shapes[f"{block}.{attn}.to_v"] = (dim, context)
                    shapes[f"{block}.{attn}.to_out.0"] = (dim, dim)
                shapes[f"{block}.ff.net.2"] = (dim, 4 * dim)
    return shapes


SD15_ATTENTIONS = attention_shapes(
    [
        ("down_blocks.0", 320, 2),
        ("down_blocks.1", 640, 2),
        ("down_blocks.2", 1280, 2),
        ("mid_block", 1280, 1),
        ("up_blocks.1", 1280, 3),
        ("up_blocks.2", 640, 3),
        ("up_blocks.3", 320, 3),
    ],
    depth={320: 1, 640: 1, 1280: 1},
    context_dim=768,
)
SDXL_ATTENTIONS = attention_shapes(
    [
        ("down_blocks.1", 640, 2),
        ("down_blocks.2", 1280, 2),
        ("mid_block", 1280, 1),
        ("up_blocks.0", 1280, 3),
        ("up_blocks.1", 640, 3),
    ],
    depth={640: 2, 1280: 10},
    context_dim=2048,
)
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def test_lora_count_matches_the_published_sd15_attention_lora():
    # diffusers' first SD1.5 DreamBooth LoRA (rank 4 on q/k/v/out of every attention): 797,184 parameters,
    # the 3.2 MB fp32 pytorch_attn_procs.bin of its README.
    assert lora_param_count(SD15_ATTENTIONS, ATTENTION_TARGETS, 4) == 797_184
    # SDXL: 70 transformer blocks, 140 attentions; per block r * (14 * width + 2 * 2048)
    assert lora_param_count(SDXL_ATTENTIONS, ATTENTION_TARGETS, 16) == 16 * (10 * 13_056 + 60 * 22_016)


# --- the estimate, by hand --------------------------------------------------------------------------------


def test_full_finetune_by_hand():
    components = (
        comp("unet", "fp32", "full", 1_000_000),
        comp("text_encoder", "bf16", params=500_000),
        comp("vae", "fp32", params=100_000),
    )
    plan = estimate(
        components=components,
        trainable_params={"unet": 1_000_000},
        batch_size=2,
        ema=True,
        teacher=("unet",),
        available=0,
    )
    assert plan.weights == 4_000_000 + 1_000_000 + 400_000
    assert plan.gradients == 4_000_000  # fp32 master gradients
    assert plan.optimizer == 8_000_000  # AdamW: two fp32 moments
    assert plan.ema == 4_000_000
    assert plan.teacher == 2_000_000  # a bf16 copy of the trained UNet
    per_pixel = family_spec("sd1").activation_bytes_per_latent_pixel[1]
    assert plan.activations == 2 * 64 * 64 * per_pixel  # checkpointed: no autocast weight copies kept
    subtotal = (
        4_000_000 + 1_000_000 + 400_000 + 4_000_000 + 8_000_000 + 4_000_000 + 2_000_000 + plan.activations
    )
    assert plan.total == subtotal + int(subtotal * 0.10) + GIB // 2
    assert plan.available == 0 and plan.fits
    assert any("unknown" in note for note in plan.notes)


def test_lora_quantized_by_hand():
    components = (
        comp("unet", "bf16", "lora", 1_000_000, quantized="int8"),
        comp("text_encoder", "bf16", params=200_000),
        comp("vae", "fp32", params=100_000),
    )
    plan = estimate(
        components=components,
        trainable_params={"lora": 10_000},
        optimizer="adamw8bit",
        max_bucket=(1024, 1024),
        family="sdxl",
        available=8 * GIB,
    )
    # int8: 99% of the UNet at 1.01 bytes (weight + scales), 1% (norms, biases) stays bf16
    unet = int(1_000_000 * (0.99 * 1.01 + 0.01 * 2))
    assert plan.weights == unet + 400_000 + 400_000 + 10_000 * 4  # adapters in fp32
    assert plan.gradients == 40_000
    assert plan.optimizer == 20_000
    assert plan.ema == plan.teacher == 0
    assert plan.activations == 128 * 128 * family_spec("sdxl").activation_bytes_per_latent_pixel[1]
    assert plan.fits and plan.available == 8 * GIB
    assert any("int8" in note for note in plan.notes)


@pytest.mark.parametrize(
    ("backend", "kind", "family", "per_weight", "kept"),
    [
        # bitsandbytes NF4: 4 bits, an int8 absmax per 64 weights, an fp32 scale per 256 absmax (rounded up
        # to 0.52); Linear layers only: the SD1 UNet's convolutions (68.6% of it, from its config) stay bf16
        ("bitsandbytes", "nf4", "sd1", 0.52, 0.69),
        ("bitsandbytes", "int8", "sdxl", 1.01, 0.14),  # LLM.int8: int8 + a scale per row; SDXL 13% non-Linear
        ("torchao", "int8", "sd1", 1.01, 0.69),
        ("quanto", "int8", "sd1", 1.01, 0.01),  # quanto quantises the convolutions too
    ],
)
def test_bytes_per_weight_of_each_backend_and_format(backend, kind, family, per_weight, kept):
    components = (comp("unet", "bf16", "lora", 1_000_000, quantized=kind), comp("vae", "fp32", params=0))
    plan = estimate(
        components=components,
        trainable_params={"lora": 0},
        max_bucket=(512, 512),
        family=family,
        quantize_backend=backend,
    )
    assert plan.weights == int(1_000_000 * ((1 - kept) * per_weight + kept * 2))
    assert any(f"unet {kind} ({backend})" in note for note in plan.notes)


@pytest.mark.parametrize(
    ("optimizer", "momentum", "per_param"),
    [
        ("adamw", 0.0, 8),
        ("adamw8bit", 0.0, 2),
        ("adafactor", 0.0, 4),
        ("sgd", 0.0, 0),
        ("sgd", 0.9, 4),
        ("prodigy", 0.9, 16),  # `momentum`: Prodigy's betas[0]
        ("prodigy", 0.0, 12),  # prodigyopt keeps no exp_avg at betas[0] = 0
        ("lion", 0.0, 4),
        ("came", 0.0, 8),
        ("pytorch_optimizer_came", 0.0, 8),
        ("prodigy_plus_schedulefree", 0.0, 5),
    ],
)
def test_optimizer_state(optimizer, momentum, per_param):
    plan = estimate(
        components=(comp("unet", "fp32", "full", 1000),),
        trainable_params={"unet": 1000},
        optimizer=optimizer,
        momentum=momentum,
    )
    assert plan.optimizer == 1000 * per_param
    if optimizer == "came":  # the count is an estimate: the note says what it stands for
        assert any(note.startswith("came state counted as 8 bytes") for note in plan.notes)
    if optimizer == "pytorch_optimizer_came":  # the same state, and the step's temporaries it leaves out
        note = next(n for n in plan.notes if n.startswith("pytorch_optimizer_came: state counted as 8 bytes"))
        assert "two gradient-sized temporaries" in note
    if optimizer == "prodigy_plus_schedulefree":
        assert any(n.startswith("prodigy_plus_schedulefree state counted as 5 bytes") for n in plan.notes)


def test_ema_offload_costs_no_device_memory():
    components = (comp("unet", "fp32", "full", 1000),)
    on_device = estimate(components=components, trainable_params={"unet": 1000}, ema=True)
    offloaded = estimate(components=components, trainable_params={"unet": 1000}, ema=True, ema_offload=True)
    assert (on_device.ema, offloaded.ema) == (4000, 0)
    assert any("offloaded" in note for note in offloaded.notes)


def test_fits_against_available():
    components = (comp("unet", "fp32", "full", 10**9),)
    small = estimate(components=components, trainable_params={"unet": 10**9}, available=8 * GIB)
    large = estimate(components=components, trainable_params={"unet": 10**9}, available=80 * GIB)
    assert small.total > 8 * GIB and not small.fits
    assert large.fits
    assert not any("unknown" in note for note in small.notes)


def test_activation_terms():
    base = dict(family="sd1", batch_size=1, max_bucket=(512, 768), mixed="bf16")
    plain, checkpointed = family_spec("sd1").activation_bytes_per_latent_pixel
    latent = 64 * 96
    assert activation_bytes(**base, gradient_checkpointing=False) == latent * plain
    assert activation_bytes(**base, gradient_checkpointing=True) == latent * checkpointed
    assert (
        activation_bytes(**base, gradient_checkpointing=True, autocast_weight_params=1000)
        == latent * checkpointed
    )
    # without checkpointing, autocast's bf16 copies of fp32 weights stay alive for the backward pass
    assert (
        activation_bytes(**base, gradient_checkpointing=False, autocast_weight_params=1000)
        == latent * plain + 2000
    )
    fp32 = activation_bytes(
        **{**base, "mixed": "no"}, gradient_checkpointing=True, autocast_weight_params=1000
    )
    assert fp32 == int(latent * checkpointed * 1.7)
    with_text = activation_bytes(**base, gradient_checkpointing=True, text_encoders=("text_encoder",))
    assert with_text > latent * checkpointed
    assert plain > checkpointed > 0
    assert (
        family_spec("sdxl").activation_bytes_per_latent_pixel[0] > plain
    )  # SDXL's deep transformers cost more
    assert activation_bytes(**{**base, "family": "sd2"}, gradient_checkpointing=True) == latent * checkpointed


def test_bad_inputs_raise():
    components = (comp("unet", "fp32", "full", 1000), comp("text_encoder", "bf16", params=10))
    with pytest.raises(ValueError, match="not a trained component"):
        estimate(components=components, trainable_params={"unet": 1000, "unte": 5})
    with pytest.raises(ValueError, match="not a trained component"):
        estimate(components=components, trainable_params={"unet": 1000, "text_encoder": 10})  # frozen
    with pytest.raises(ValueError, match="lacks"):
        estimate(components=components, trainable_params={})
    with pytest.raises(ValueError, match="unknown optimizer"):
        estimate(components=components, trainable_params={"unet": 1000}, optimizer="adam")
    with pytest.raises(ValueError, match="unknown model family"):
        estimate(components=components, trainable_params={"unet": 1000}, family="sd9")


def test_trained_text_encoder_adds_its_share():
    unet_only = (
        comp("unet", "fp32", "full", SD15["unet"]),
        comp("text_encoder", "bf16", params=SD15["text_encoder"]),
    )
    with_text = (
        comp("unet", "fp32", "full", SD15["unet"]),
        comp("text_encoder", "fp32", "full", SD15["text_encoder"]),
    )
    a = estimate(components=unet_only, trainable_params={"unet": SD15["unet"]})
    b = estimate(
        components=with_text, trainable_params={"unet": SD15["unet"], "text_encoder": SD15["text_encoder"]}
    )
    assert b.gradients - a.gradients == SD15["text_encoder"] * 4
    assert b.weights - a.weights == SD15["text_encoder"] * 2  # bf16 -> fp32
    assert b.activations > a.activations


# --- published figures (peers.md §E1; docs/memory.md) ---------------------------------------------------


def sd15_full(mixed: str) -> tuple[ComponentPlan, ...]:
    held = "fp32" if mixed == "no" else mixed
    return (
        comp("unet", "fp32", "full", SD15["unet"]),
        comp("text_encoder", held, params=SD15["text_encoder"]),
        comp("vae", held, params=SD15["vae"]),
    )


def test_sd15_full_8bit_adam_checkpointing_matches_the_diffusers_figures():
    # diffusers examples/dreambooth: a 16 GB GPU trains SD1.x at 512 px, batch 1, with 8-bit Adam and
    # checkpointing (accelerate's default config: no mixed precision); 12 GB adds memory-efficient attention,
    # which dbspec always uses (SDPA); 8 GB needs DeepSpeed offload.
    plan = estimate(
        components=sd15_full("no"), trainable_params={"unet": SD15["unet"]}, optimizer="adamw8bit", mixed="no"
    )
    assert 8 * GIB < plan.total <= 12 * GIB
    # The same run in bf16 (dbspec's default on a GPU) needs a little less.
    bf16 = estimate(
        components=sd15_full("bf16"), trainable_params={"unet": SD15["unet"]}, optimizer="adamw8bit"
    )
    assert 8 * GIB < bf16.total < plan.total


def test_sd15_full_matches_shivam_t4_table():
    # ShivamShrirao/diffusers README, measured on a T4 (latents and text cached, encoders freed, fp16):
    # 9.92 GB (batch 1, checkpointing, 8-bit Adam), 10.4 (batch 2), 15.79 (AdamW instead of 8-bit).
    unet = (comp("unet", "fp32", "full", SD15["unet"]),)
    cases = [(1, "adamw8bit", 9.92), (2, "adamw8bit", 10.4), (1, "adamw", 15.79)]
    for batch_size, optimizer, published in cases:
        plan = estimate(
            components=unet,
            trainable_params={"unet": SD15["unet"]},
            optimizer=optimizer,
            batch_size=batch_size,
            mixed="fp16",
        )
        assert abs(plan.total / GIB - published) / published < 0.10, (batch_size, optimizer, plan.total / GIB)


def sdxl_lora(quantized: str) -> tuple[ComponentPlan, ...]:
    return (
        comp("unet", "bf16", "lora", SDXL["unet"], quantized=quantized),
        comp("text_encoder", "bf16", params=SDXL["text_encoder"]),
        comp("text_encoder_2", "bf16", params=SDXL["text_encoder_2"]),
        comp("vae", "fp32", params=SDXL["vae"]),
    )


SDXL_RANK16_ATTENTION_LORA = lora_param_count(SDXL_ATTENTIONS, ATTENTION_TARGETS, 16)  # 23.2M


def test_sdxl_lora_int8_checkpointing_fits_16_gb():
    # diffusers README_sdxl: SDXL DreamBooth LoRA fits < 16 GB with checkpointing and 8-bit Adam.
    plan = estimate(
        components=sdxl_lora("int8"),
        trainable_params={"lora": SDXL_RANK16_ATTENTION_LORA},
        optimizer="adamw8bit",
        max_bucket=(1024, 1024),
        family="sdxl",
        available=16 * GIB,
    )
    assert plan.total < 16 * GIB and plan.fits


def test_sdxl_lora_bf16_matches_kohya():
    # kohya docs/train_SDXL-en.md: SDXL LoRA needs 8 GB (10 GB recommended), text encoder outputs cached.
    unet_and_vae = (comp("unet", "bf16", "lora", SDXL["unet"]), comp("vae", "fp32", params=SDXL["vae"]))
    plan = estimate(
        components=unet_and_vae,
        trainable_params={"lora": SDXL_RANK16_ATTENTION_LORA},
        optimizer="adamw8bit",
        max_bucket=(1024, 1024),
        family="sdxl",
    )
    assert 6 * GIB < plan.total < 10 * GIB


def test_sdxl_full_finetune_does_not_fit_24_gb_with_fp32_master_weights():
    # kohya's 24 GB SDXL full fine-tune holds bf16 weights and fuses the optimizer into backward (no gradient
    # buffer); with fp32 master weights, gradients and 8-bit Adam the same run needs ~30 GB.
    components = (comp("unet", "fp32", "full", SDXL["unet"]), comp("vae", "fp32", params=SDXL["vae"]))
    plan = estimate(
        components=components,
        trainable_params={"unet": SDXL["unet"]},
        optimizer="adamw8bit",
        max_bucket=(1024, 1024),
        family="sdxl",
        available=24 * GIB,
    )
    assert not plan.fits and plan.total < 40 * GIB


def test_bf16_trained_weights_halve_weights_and_gradients_not_the_optimizer_state():
    """precision.weights = "bf16": 2 bytes per trained weight and gradient; the AdamW moments stay fp32."""

    def run(dtype: str):
        components = (comp("unet", dtype, "full", 1_000_000), comp("vae", "fp32", params=100_000))
        return estimate(components=components, trainable_params={"unet": 1_000_000})

    fp32, bf16 = run("fp32"), run("bf16")
    assert (fp32.weights - bf16.weights, fp32.gradients - bf16.gradients) == (2_000_000, 2_000_000)
    assert bf16.gradients == 2_000_000 and bf16.optimizer == fp32.optimizer == 8_000_000
    assert any("stochastic rounding" in note for note in bf16.notes)
    assert not any("stochastic rounding" in note for note in fp32.notes)


# --- measured at real sizes (tests/bench/bench_memory.py; docs/memory.md "At real model sizes") -------------


def test_sd15_lora_fp32_matches_the_measured_peak_at_real_size():
    # bench_memory.py, 2026-11-30: the full-size SD1.5 folder (random weights), LoRA rank 16 on the attention
    # projections, 512 px, batch 1, AdamW, fp32 on the CPU, no checkpointing: peak RSS of `dbspec run`
    # 7,023,763,456 bytes (3.7 GiB file-backed weights and libraries, 2.80 GiB anonymous).
    measured = 7_023_763_456
    plan = estimate(
        components=(
            comp("unet", "fp32", "lora", SD15["unet"]),
            comp("text_encoder", "fp32", params=SD15["text_encoder"]),
            comp("vae", "fp32", params=SD15["vae"]),
        ),
        trainable_params={"lora": lora_param_count(SD15_ATTENTIONS, ATTENTION_TARGETS, 16)},
        gradient_checkpointing=False,
        mixed="no",
    )
    assert abs(plan.total - measured) / measured < 0.15, plan.total / GIB


# --- sharding across processes ([distributed]: FSDP, DeepSpeed ZeRO) ----------------------------------------
def _sharded_estimate(strategy: str, processes: int, **settings):
    """A full fine-tune of a 1M-parameter fp32 UNet (AdamW) beside a frozen 500k bf16 text encoder, under
    `strategy` over `processes` processes."""
    from dbspec.compiler.distributed import plan_distributed, sharding
    from dbspec.spec.model import Distributed

    components = (comp("unet", "fp32", "full", 1_000_000), comp("text_encoder", "bf16", params=500_000))
    plan = plan_distributed(Distributed(strategy=strategy, **settings))
    return estimate(
        components=components, trainable_params={"unet": 1_000_000}, sharding=sharding(plan, processes)
    )


@pytest.mark.parametrize("processes", [1, 2, 8])
def test_sharding_divides_the_trained_state_by_the_process_count(processes):
    """ZeRO-2 and FSDP shard_grad_op: optimizer state and gradients / N, weights whole; ZeRO-3 and FSDP
    full_shard: the trained model's weights / N too, plus 15% of them gathered; the frozen text encoder whole.
    DDP and one process: all of it (the DDP estimate)."""
    ddp = _sharded_estimate("ddp", processes)
    unet_w, text_w, grads, adam = 4_000_000, 1_000_000, 4_000_000, 8_000_000
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (unet_w + text_w, grads, adam)
    for strategy, settings in (
        ("deepspeed", {"zero_stage": 2}),
        ("fsdp", {"fsdp_sharding": "shard_grad_op"}),
    ):
        m = _sharded_estimate(strategy, processes, **settings)
        assert (m.weights, m.gradients, m.optimizer) == (
            unet_w + text_w,
            grads // processes,
            adam // processes,
        )
    for strategy, settings in (("deepspeed", {"zero_stage": 3}), ("fsdp", {"fsdp_sharding": "full_shard"})):
        m = _sharded_estimate(strategy, processes, **settings)
        gathered = int(unet_w * 0.15) if processes > 1 else 0
        assert m.weights == text_w + unet_w // processes + gathered
        assert (m.gradients, m.optimizer) == (grads // processes, adam // processes)
        if processes > 1:
            assert m.total < ddp.total
            assert any(f"over {processes} process(es)" in note for note in m.notes)
        else:
            assert m.total == ddp.total and not any("process(es)" in note for note in m.notes)


@pytest.mark.parametrize("processes", [1, 2, 8])
def test_cpu_offload_moves_the_shards_to_host_memory_and_says_so(processes):
    """ZeRO-Offload: the optimizer state and its gradient partition to host memory (0 on the device);
    zero_offload_params (ZeRO-3) the weight shard too; FSDP's cpu_offload all three. The note names the host
    bytes per process."""
    optimizer = _sharded_estimate("deepspeed", processes, zero_stage=2, zero_offload_optimizer=True)
    assert (optimizer.optimizer, optimizer.gradients, optimizer.weights) == (0, 0, 5_000_000)
    params = _sharded_estimate(
        "deepspeed", processes, zero_stage=3, zero_offload_optimizer=True, zero_offload_params=True
    )
    fsdp = _sharded_estimate("fsdp", processes, fsdp_cpu_offload=True)
    for m in (params, fsdp):
        assert (m.optimizer, m.gradients) == (0, 0)
        assert m.weights == 1_000_000 + int(4_000_000 * 0.15)  # text encoder + the gathered blocks only
    host = [n for n in fsdp.notes if n.startswith("CPU offload:")]
    assert len(host) == 1 and "host memory per process" in host[0]
    assert f"{8_000_000 // processes / GIB:.2f} GiB optimizer state" in host[0]


def test_sd15_full_fp32_matches_the_measured_peak_at_real_size():
    # bench_memory.py, 2026-11-30: the full-size SD1.5 folder (random weights), full fine-tune of the UNet,
    # 512 px, batch 1, AdamW, fp32 on the CPU, no checkpointing, 2 steps: peak RSS of `dbspec run`
    # 21,446,807,552 bytes (19.97 GiB, all of it anonymous: a trained UNet is copied out of the file pages).
    measured = 21_446_807_552
    plan = estimate(
        components=(
            comp("unet", "fp32", "full", SD15["unet"]),
            comp("text_encoder", "fp32", params=SD15["text_encoder"]),
            comp("vae", "fp32", params=SD15["vae"]),
        ),
        trainable_params={"unet": SD15["unet"]},
        gradient_checkpointing=False,
        mixed="no",
    )
    assert abs(plan.total - measured) / measured < 0.15, plan.total / GIB


def test_bf16_weights_stepped_directly_count_the_state_in_the_dtype_the_optimizer_creates():
    """weights_rounding = "nearest" (kohya's full_bf16): AdamW and Prodigy create their moments like the bf16
    parameter (2 bytes each); Adafactor keeps fp32 state; stochastic rounding keeps every state fp32."""
    n = 1_000_000
    components = (comp("unet", "bf16", "full", n), comp("vae", "fp32", params=0))
    kw = dict(components=components, trainable_params={"unet": n})
    stochastic = estimate(**kw)
    nearest = estimate(**kw, stochastic_rounding=False)
    assert stochastic.optimizer == n * 2 * 4  # exp_avg + exp_avg_sq in fp32
    assert nearest.optimizer == n * 2 * 2  # the same two moments in bf16
    assert nearest.gradients == stochastic.gradients == n * 2
    assert any("round-to-nearest" in note and "bf16, half" in note for note in nearest.notes)
    prodigy = estimate(**kw, optimizer="prodigy", momentum=0.9, stochastic_rounding=False)
    assert prodigy.optimizer == n * 4 * 2  # exp_avg, exp_avg_sq, s, p0: bf16
    adafactor = estimate(**kw, optimizer="adafactor", stochastic_rounding=False)
    assert adafactor.optimizer == estimate(**kw, optimizer="adafactor").optimizer  # fp32 whatever the weights
    fp32 = estimate(components=(comp("unet", "fp32", "full", n),), trainable_params={"unet": n})
    assert (
        estimate(
            components=(comp("unet", "fp32", "full", n),),
            trainable_params={"unet": n},
            stochastic_rounding=False,
        ).optimizer
        == fp32.optimizer
    )  # fp32 weights: nothing changes


@pytest.mark.parametrize("slice_p", [1, 11])
@pytest.mark.parametrize("beta1", [0.9, 0.0])
def test_prodigy_slice_p_shrinks_s_and_p0(slice_p, beta1):
    """prodigyopt 1.1 keeps exp_avg (only with betas[0] > 0) and exp_avg_sq like the parameter, s and p0 as
    flatten()[::slice_p]."""
    n = 1_100_000
    plan = estimate(
        components=(comp("unet", "fp32", "full", n),),
        trainable_params={"unet": n},
        optimizer="prodigy",
        momentum=beta1,
        slice_p=slice_p,
    )
    moments = 2 if beta1 else 1
    assert plan.optimizer == int(n * 4 * moments + n / slice_p * 4 * 2)
    assert any("slice_p" in note for note in plan.notes) == (slice_p > 1 or not beta1)
    assert any("no exp_avg at betas[0] = 0" in note for note in plan.notes) == (not beta1)
    # slice_p means nothing to other optimizers
    adamw = estimate(components=(comp("unet", "fp32", "full", n),), trainable_params={"unet": n}, slice_p=11)
    assert adamw.optimizer == n * 8


def test_prodigy_slice_p_reaches_the_plan_estimate():
    spec = Path(__file__).parents[2] / "specs" / "quickstart.toml"
    base = ["optimizer.kind=prodigy", "optimizer.lr=1.0"]
    whole, sliced = (plan_at(spec, [*base, f"optimizer.slice_p={p}"]).memory for p in (1, 11))
    assert 0 < sliced.optimizer < whole.optimizer
    assert whole.optimizer - sliced.optimizer == pytest.approx(whole.optimizer * (8 - 8 / 11) / 16, rel=1e-3)


def test_prodigy_betas_zero_reaches_the_plan_estimate():
    """optimizer.betas = [0, ...]: prodigyopt 1.1 keeps no exp_avg (Prodigy.step's `if beta1 > 0`), so the
    plan's optimizer state is 12 of the 16 bytes per parameter (issue 12: it counted exp_avg)."""
    spec = Path(__file__).parents[2] / "specs" / "quickstart.toml"
    base = ["optimizer.kind=prodigy", "optimizer.lr=1.0"]
    first, none = (plan_at(spec, [*base, f"optimizer.betas=[{b}, 0.999]"]).memory for b in (0.9, 0.0))
    assert none.optimizer == pytest.approx(first.optimizer * 12 / 16, rel=1e-6)
    assert any("no exp_avg" in note for note in none.notes)


@pytest.mark.parametrize(("kind", "share"), [("lora", 0.5), ("ia3", 1.0), ("loha", 0.0)])
def test_prodigy_counts_a_scalar_p0_for_zero_start_adapters(kind, share):
    """prodigyopt 1.1 keeps a scalar p0 for a tensor that is all zero at its first step: a fresh LoRA's ups
    (half its parameters on square layers), IA^3's scales; LoHa claims none (tests/runtime/
    test_prodigy_state.py steps the real optimizer on peft's LoRA). Other optimizers keep their count."""
    spec = Path(__file__).parents[2] / "specs" / "quickstart.toml"
    base = [f"adapter.kind={kind}", "optimizer.kind=prodigy", "optimizer.lr=1.0"]
    plan = plan_at(spec, base)
    n = sum(plan.adapter.params.values())
    zero = int(n * share)
    assert plan.memory.optimizer == n * 16 - zero * 4
    assert any("scalar for an all-zero tensor" in note for note in plan.memory.notes) == bool(share)
    sliced = plan_at(spec, [*base, "optimizer.slice_p=4"]).memory.optimizer
    assert sliced == int(n * (8 + 8 / 4)) - int(zero * 4 / 4)
    adamw = plan_at(spec, [f"adapter.kind={kind}"]).memory.optimizer
    assert adamw == n * 8


def test_prodigy_zero_start_claims_nothing_it_cannot_know():
    """A starting file, LoRA's convolutions (their down is in x k x k) and blocks of another kind start no
    tensor known to be all zero: their p0 stays counted in full (an upper bound)."""
    from dbspec.compiler.memory import prodigy_zero_start
    from dbspec.spec.model import AdapterBlock, LoraAdapter

    assert prodigy_zero_start(LoraAdapter(kind="lora"), 100) == 50
    assert prodigy_zero_start(LoraAdapter(kind="lora", init_weights="prev.safetensors"), 100) == 0
    assert prodigy_zero_start(LoraAdapter(kind="lora", conv_rank=4), 100) == 0
    block = AdapterBlock(pattern="attn1", kind="full", rank=1, alpha=1.0)
    assert prodigy_zero_start(LoraAdapter(kind="lora", blocks=[block]), 100) == 0
