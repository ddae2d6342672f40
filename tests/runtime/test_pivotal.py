"""Pivotal tuning on tiny models: new tokens in every tokenizer and text encoder, only their rows train, the
exported embedding files load back in diffusers and give the trained prompt embeddings, and a run stopped
midway resumes bit-exact (token rows and their optimizer state included)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.sample import SampleRequest, load_pipeline
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

PROMPT = "a photo of ohwx toy"


def _spec(tmp_path: Path, base: str, extra: str = "", steps: int = 3, vectors: int = 2) -> Path:
    return write_spec(
        tmp_path,
        base=base,
        steps=steps,
        with_class=True,
        extra=f'[pivotal]\ntokens = ["ohwx"]\nvectors = {vectors}\ninit_word = "toy"\nlr = 1e-2\n{extra}',
    )


def _trained_embeds(result, plan) -> torch.Tensor:
    comps = result.components
    family = family_runtime(plan.model.family)
    prompt = PROMPT.replace("ohwx", " ".join(plan.pivotal.tokens[0].added))
    with torch.no_grad():
        return family.encode_prompts(
            comps.text_encoders, comps.tokenizers, [prompt], clip_skip=1, max_tokens=75, device="cpu"
        )["prompt_embeds"]


def _base_rows(base_pipe, encoder) -> torch.Tensor:
    return getattr(base_pipe, encoder).get_input_embeddings().weight.detach()


def test_sd1_lora_trains_only_the_new_rows_and_the_export_loads_in_diffusers(tmp_path):
    plan = compile_spec(_spec(tmp_path, "builtin:tiny-sd1", '[adapter]\nkind = "lora"\nrank = 2\n'))
    p = plan.pivotal
    assert p is not None and p.tokens[0].added == ("ohwx", "ohwx_1") and p.encoders == ("text_encoder",)
    # the instance caption names the token: no text-cache key; the class caption keeps its key
    instance, klass = plan.datasets
    assert all(img.text_key == "" for img in instance.images) and all(img.text_key for img in klass.images)
    assert any("pivotal token" in n for n in plan.cache.notes)
    result = execute(plan, keep_models=True)
    comps, base = result.components, build_pipeline("builtin:tiny-sd1")
    tok = comps.tokenizers[0]
    new = tok.convert_tokens_to_ids(["ohwx", "ohwx_1"])
    weight = comps.text_encoders[0].get_input_embeddings().weight.detach()
    before = _base_rows(base, "text_encoder")
    assert weight.shape[0] == before.shape[0] + 2
    assert torch.equal(weight[: before.shape[0]], before)  # the old vocabulary is exactly as loaded
    init = before[base.tokenizer("toy", add_special_tokens=False).input_ids[0]]
    assert not torch.equal(weight[new[0]], init)  # the new rows moved from their init word

    (file,) = (Path(result.final) / "embeddings").glob("*.safetensors")
    saved = load_file(str(file))
    assert set(saved) == {"emb_params"} and saved["emb_params"].shape == (2, weight.shape[1])
    assert torch.equal(saved["emb_params"], weight[new].float())
    base.load_textual_inversion(str(file), token="ohwx")  # diffusers' own loader (A1111 single-key file)
    with torch.no_grad():
        loaded, _ = base.encode_prompt(PROMPT, "cpu", 1, False)
    assert torch.equal(loaded, _trained_embeds(result, plan))
    # `dbspec sample` of the run loads the LoRA and the tokens: the same prompt embeddings again
    sampled = load_pipeline(SampleRequest(source=Path(result.output), settings=plan.validation))
    with torch.no_grad():
        again, _ = sampled.encode_prompt(PROMPT, "cpu", 1, False)
    assert torch.equal(again, _trained_embeds(result, plan))


def test_sdxl_full_finetune_adds_the_tokens_to_both_encoders_and_exports_clip_l_and_clip_g(tmp_path):
    plan = compile_spec(_spec(tmp_path, "builtin:tiny-sdxl", steps=2, vectors=1))
    assert plan.pivotal.encoders == ("text_encoder", "text_encoder_2")
    result = execute(plan, keep_models=True)
    comps, base = result.components, build_pipeline("builtin:tiny-sdxl")
    for enc, name in zip(comps.text_encoders, ("text_encoder", "text_encoder_2")):
        before = _base_rows(base, name)
        weight = enc.get_input_embeddings().weight.detach()
        assert torch.equal(weight[: before.shape[0]], before), name
    (file,) = (Path(result.final) / "embeddings").glob("*.safetensors")
    saved = load_file(str(file))
    assert set(saved) == {"clip_l", "clip_g"}
    # as diffusers documents for SDXL: once per encoder, with its text encoder and tokenizer
    base.load_textual_inversion(
        saved["clip_l"], token="ohwx", text_encoder=base.text_encoder, tokenizer=base.tokenizer
    )
    base.load_textual_inversion(
        saved["clip_g"], token="ohwx", text_encoder=base.text_encoder_2, tokenizer=base.tokenizer_2
    )
    with torch.no_grad():
        loaded = base.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)[0]
    assert torch.equal(loaded, _trained_embeds(result, plan))


def test_pivotal_resumes_bit_exact_across_its_stop_step(tmp_path):
    spec = _spec(tmp_path, "builtin:tiny-sd1", '[adapter]\nkind = "lora"\nrank = 2\n', steps=4)
    spec.write_text(spec.read_text().replace("lr = 1e-2\n", "lr = 1e-2\nstop_step = 2\n", 1))
    whole = execute(compile_spec(spec, ["output.dir=whole"]), keep_models=True)
    plan = compile_spec(spec, ["output.dir=parts", "checkpoints.every=1", "checkpoints.keep=0"])
    assert plan.pivotal.stop_step == 2
    assert execute(plan, stop_after=1).status == "interrupted"
    resumed = execute(plan, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4
    for name in ("embeddings/ohwx.safetensors", "pytorch_lora_weights.safetensors"):
        ours, theirs = load_file(str(Path(whole.final) / name)), load_file(str(Path(resumed.final) / name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    # the rows stop after step 2: the step-2 checkpoint already holds the final embedding, step 1's does not
    final = load_file(str(Path(resumed.final) / "embeddings/ohwx.safetensors"))["emb_params"]
    saved = {
        int("".join(c for c in f.parent.parent.name if c.isdigit())): load_file(str(f))["emb_params"]
        for f in Path(resumed.output).rglob("embeddings/ohwx.safetensors")
        if f.parent.parent != Path(resumed.final)
    }
    assert torch.equal(saved[2], final) and not torch.equal(saved[1], final), sorted(saved)


def test_a_half_precision_text_encoder_trains_the_token_rows_in_fp32(tmp_path):
    plan = compile_spec(
        _spec(tmp_path, "builtin:tiny-sd1", '[adapter]\nkind = "lora"\nrank = 2\n', steps=1, vectors=1),
        ["precision.mixed=bf16"],
    )
    assert {c.name: c.dtype for c in plan.precision.components}["text_encoder"] == "bf16"
    result = execute(plan, keep_models=True)
    enc = result.components.text_encoders[0]
    weight = enc.get_input_embeddings().weight
    assert weight.dtype == torch.float32 and next(enc.encoder.parameters()).dtype == torch.bfloat16
    row = weight.detach()[result.components.tokenizers[0].convert_tokens_to_ids("ohwx")]
    init = build_pipeline("builtin:tiny-sd1").text_encoder.get_input_embeddings().weight.detach()
    toy = init[result.components.tokenizers[0]("toy", add_special_tokens=False).input_ids[0]]
    assert not torch.equal(row, toy.to(row.dtype))  # the step moved it


def test_refiner_exports_its_only_encoder_as_clip_g_and_sample_loads_it(tmp_path):
    # The refiner's one text encoder is OpenCLIP bigG: its rows go under "clip_g", as A1111/ComfyUI read them.
    plan = compile_spec(
        _spec(
            tmp_path, "builtin:tiny-sdxl-refiner", '[adapter]\nkind = "lora"\nrank = 2\n', steps=2, vectors=1
        )
    )
    assert plan.pivotal.encoders == ("text_encoder_2",)
    result = execute(plan, keep_models=True)
    (file,) = (Path(result.final) / "embeddings").glob("*.safetensors")
    saved = load_file(str(file))
    assert set(saved) == {"clip_g"}
    base = build_pipeline("builtin:tiny-sdxl-refiner")
    base.load_textual_inversion(
        saved["clip_g"], token="ohwx", text_encoder=base.text_encoder_2, tokenizer=base.tokenizer_2
    )
    with torch.no_grad():
        loaded = base.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)[0]
    assert torch.equal(loaded, _trained_embeds(result, plan))
    sampled = load_pipeline(SampleRequest(source=Path(result.output), settings=plan.validation))
    with torch.no_grad():
        again = sampled.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)[0]
    assert torch.equal(again, _trained_embeds(result, plan))
