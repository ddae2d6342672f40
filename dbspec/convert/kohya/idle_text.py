"""kohya's text-encoder modules at text_encoder_lr 0 (issue 12): train_network.py's apply_to builds the
network's text-encoder modules whenever --network_train_unet_only is off (is_train_text_encoder reads no
rate), fresh or with a --network_weights file's weights (create_network_from_weights / load_weights), and
the networks' prepare_optimizer_params leave a group at rate 0 out of the optimizer (networks.lora: "lr" 0
skipped; LyCORIS: "NO LR skipping!"). The text encoder then encodes under grad through modules that never
change, whose gradients optimizer.zero_grad never clears: they add up step after step and count in
max_grad_norm's clip (get_trainable_params: every parameter of the network), which scales the sum in place.

`train.text_encoder_idle = "kohya"` is that run for the CLIP encoders (runtime/idle_text.py; checked bit for
bit against lycoris-lora's kohya network in tests/runtime/test_kohya_idle_text_clip.py): networks.lora,
networks.dylora and lycoris.kohya on train_network.py / sdxl_train_network.py, and networks.lora_flux /
lora_sd3 and lycoris.kohya on flux_train_network.py / sd3_train_network.py (their CLIP encoders: train_clip_l
/ train_clip run them under grad whenever --network_train_unet_only is off, cached outputs or not) map to
it, fresh modules under a clip (without one, train.text_encoder = false is the same run) and a file's
modules always (adapter.init_weights loads them into the idle encoder). networks.lora_fa keeps the group in
the optimizer at rate 0 (cleared every step, still clipped): under a clip that is a text encoder trained at
optimizer.text_encoder_lr = 0 (train.py _lora_fa_text_held), where dbspec holds a group at rate 0 (not
with D-Adaptation or Prodigy where they move it, Adafactor's relative step, OneCycleLR / CyclicLR or an
eta_min: rate_zero.py), and
so is a --network_weights file's lora_fa text-encoder modules at rate 0, whatever the clip (file_held).

`train.t5_idle = "kohya"` is the same run for T5-XXL (map_t5_idle, put_lycoris_t5; was DBS404 / DBS403).
What kohya does there (sd-scripts 48d368fa):
- flux_train_network.py:72 starts train_t5xxl False; post_process_network (:192-199) takes the network's
  train_t5xxl and raises ValueError with cache_text_encoder_outputs, so with T5's modules T5's outputs are
  never cached; get_models_for_text_encoding (:201-208) then hands CLIP-L and T5 both, every step.
  sd3_train_network.py:168-175 / :177-184 likewise (CLIP-L, CLIP-G, T5).
- train_network.py:423 encodes under torch.set_grad_enabled(is_train and train_text_encoder), where
  train_text_encoder = is_train_text_encoder (:221-222, not --network_train_unet_only): T5 runs under grad
  whatever its rate, and :709 apply_to keeps its modules.
- networks/lora_flux.py: train_t5xxl=True (:575-577; a --dim_from_weights file's lora_te3 names, :684-685)
  builds T5's modules (:940 skips them otherwise); prepare_optimizer_params_with_multiple_te_lrs pads
  text_encoder_lr to [CLIP-L, T5] (:1195-1203) and assembles T5's group at the second value (:1313-1315),
  "NO LR skipping!" at 0 (:1293-1295). networks/lora_sd3.py: [CLIP-L, CLIP-G, T5] (:634-644), T5 at the
  third (:705-706), skipped at 0 (:675), built only with train_t5xxl (:420).
- train_network.py:1447-1450 clips accelerator.unwrap_model(network).get_trainable_params(), which is
  self.parameters() (lora_flux.py:1340-1341, lora_sd3.py:731-732, lycoris kohya.py:875-876): every module's,
  registered by apply_to as text_encoder_loras + unet_loras (lora_flux.py:1153, lora_sd3.py:588, lycoris
  kohya.py:733-737) in the text encoders' order, so T5's come after the CLIP encoders' and before the
  denoiser's; :1459 optimizer.zero_grad(set_to_none=True) clears only the optimizer's parameters, so T5's
  gradients add up uncleared and count in every clip, exactly as CLIP's do.
- lycoris.kohya has one text group at text_encoder_lr's first value (kohya.py:838-846; train_network.py
  hands it the first value, no prepare_optimizer_params_with_multiple_te_lrs): a preset or file reaching
  T5 puts T5's modules in it, idle with CLIP's at 0, train_t5xxl or not (T5 encodes every step unless the
  outputs are cached, when it never runs: lycoris_flow_file._t5_idle).
- T5's module mode: every text encoder in train mode with --gradient_checkpointing, eval without
  (train_network.py:900-911), which t5_mode.py writes where dbspec's "trained" differs for an idle T5.

With --dim_from_weights SDXL's and SD3's CLIP encoder without modules in the file gets empty targets
(model.py _idle_targets). Elsewhere: a file's idle modules dbspec cannot hold are DBS403
(idle_text_modules), fresh modules under a clip a DBS404 warning (clipped_idle_text: networks.lora_fa
where dbspec cannot hold its group at rate 0)."""

from __future__ import annotations

from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.compiler.weight_file import read_weights_header
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.rate_zero import lora_fa_holds, lora_fa_kept

# kohya's per-encoder rates (prepare_optimizer_params_with_multiple_te_lrs): the file's prefix -> the
# text_encoder_lr value it trains at (lora_flux: [CLIP-L, T5-XXL]; lora_sd3: [CLIP-L, CLIP-G, T5-XXL]);
# T5-XXL's modules train only with train_t5xxl (lora_flux.py / lora_sd3.py here), left to those mappings
_MULTIPLE = {
    "networks.lora_flux": {"lora_te1_": 0},
    "networks.lora_sd3": {"lora_te1_": 0, "lora_te2_": 1},
}


# the scripts and networks whose text-encoder modules at rate 0 train.text_encoder_idle = "kohya" keeps
# exactly (SD 1.x/2.x, SDXL, and Flux / SD3's CLIP encoders, which flux_train_network.py /
# sd3_train_network.py run under grad whenever --network_train_unet_only is off, cached text-encoder
# outputs or not: their get_models_for_text_encoding hands CLIP anew each step; networks.lora_fa keeps its
# group in the optimizer at rate 0, cleared each step)
_IDLE_SCRIPTS = ("train_network", "sdxl_train_network", "flux_train_network", "sd3_train_network")
_IDLE_MODULES = (
    "networks.lora",
    "networks.dylora",
    "lycoris.kohya",
    "networks.lora_flux",
    "networks.lora_sd3",
)
T5_IDLE_NOTE = (
    "T5-XXL's text_encoder_lr is 0: kohya still builds its LoRA modules and encodes with T5 under grad each "
    "step; they never train while their gradients add up and count in max_grad_norm's clip"
)
IDLE_NOTE = (
    "text_encoder_lr 0: kohya's apply_to still builds the text-encoder modules, which never train while "
    "their gradients add up and count in max_grad_norm's clip"
)


def idle_kohya(a: dict[str, Legacy], script: str, file: bool = False) -> bool:
    """Whether the text-encoder modules kohya builds at rate 0 convert exactly as train.text_encoder_idle =
    "kohya" (dbspec's idle encoders: adapted, out of the optimizer, their gradients added up uncleared and
    clipped): networks.lora, networks.dylora and lycoris.kohya on train_network.py / sdxl_train_network.py,
    networks.lora_flux / lora_sd3 and lycoris.kohya on flux_train_network.py / sd3_train_network.py (their
    CLIP encoders; T5-XXL's modules at rate 0 beside them are train.t5_idle's, map_t5_idle), under a clip,
    or (`file`) with a --network_weights file's modules on them (without either, fresh modules leave the
    output the base's and train.text_encoder = false is the same run, cheaper)."""
    module = a["network_module"].value if "network_module" in a else "networks.lora"
    return (file or bool(a["max_grad_norm"].value)) and script in _IDLE_SCRIPTS and module in _IDLE_MODULES


def map_t5_idle(legacy: Legacy, a: dict[str, Legacy], conv: Conversion, file: bool = False) -> bool:
    """T5-XXL's modules kohya builds at T5's rate 0 (`legacy`: what builds them; `file`: a
    --network_weights file's, loaded by adapter.init_weights) as train.t5_idle = "kohya": under a clip, or
    with a file's modules whatever the clip; True when written. Without either, fresh modules leave T5's
    output the base's and nothing reads their gradients: T5 frozen is the same run (False)."""
    if not (file or a["max_grad_norm"].value):
        return False
    conv.put(("train", "t5_idle"), "kohya", conv.comment(legacy, T5_IDLE_NOTE))
    conv.record(legacy, "mapped", "train.t5_idle")
    return True


def put_lycoris_t5(a: dict[str, Legacy], conv: Conversion, why: str) -> None:
    """LyCORIS's T5-XXL modules (a preset's or a --network_weights file's) in its one text group, at
    text_encoder_lr's first value: train.t5, or at rate 0 train.t5_idle = "kohya" (flux_train_network.py /
    sd3_train_network.py run T5 under grad whatever train_t5xxl says, its outputs not cached; the modules
    never train, their gradients add up and count in the clip). Fresh ones at rate 0 without a clip never
    reach here (lycoris_flow_file._t5_idle drops them: T5 frozen is the same run)."""
    if _rates(a)[0] == 0:  # the first text_encoder_lr value, else learning_rate
        conv.put(("train", "t5_idle"), "kohya", f"{why}; {T5_IDLE_NOTE}")
    else:
        conv.put(("train", "t5"), True, why)


def file_holds(a: dict[str, Legacy], paths, prefix: str) -> bool:
    """Whether the --network_weights file holds modules under `prefix` (False unread)."""
    weights = a["network_weights"]
    local = paths.local(weights.value) if weights.value and paths is not None else None
    try:
        return bool(local) and any(k.startswith(prefix) for k in read_weights_header(local))
    except (ModelFileError, OSError, ValueError):
        return False


def _rates(a: dict[str, Legacy]) -> list[float]:
    te = a["text_encoder_lr"].value
    values = te if isinstance(te, list) else [te] if te is not None else []
    if not values:
        return [float(a["learning_rate"].value or 0.0)]
    return [float(v) for v in values]


# LyCORIS's T5-XXL prefix on the flow scripts (the index of T5 in the encoder list kohya hands it; Chroma's
# as Flux's): its modules at rate 0 are train.t5_idle's (put_lycoris_t5), not a CLIP encoder's
_LYCORIS_T5 = {"flux_train_network": "lora_te2_", "sd3_train_network": "lora_te3_"}


def _idle_modules(a: dict[str, Legacy], paths, script: str = "") -> dict[str, str]:
    """The --network_weights file's CLIP-encoder modules kohya applies at rate 0: the first module of each
    encoder prefix (lora_te_, lora_te1_, ...) by prefix (T5-XXL's are train.t5_idle's: lora_flux's /
    lora_sd3's lora_te3_, LyCORIS's last prefix on `script`); {} for none, or an unreadable file (left to
    the mappings that read it)."""
    weights = a["network_weights"]
    if not weights.value or ("network_train_unet_only" in a and a["network_train_unet_only"].value):
        return {}
    local = paths.local(weights.value)
    try:
        names = sorted({k.split(".", 1)[0] for k in read_weights_header(local)}) if local else []
    except (ModelFileError, OSError, ValueError):
        return {}
    rates = _rates(a)
    module = a["network_module"].value if "network_module" in a else None
    per_encoder = _MULTIPLE.get(str(module))
    idle: dict[str, str] = {}  # the first idle module of each encoder prefix
    t5 = _LYCORIS_T5.get(script) if module == "lycoris.kohya" else None
    for name in names:
        if not name.startswith("lora_te") or (t5 and name.startswith(t5)):
            continue
        prefix = name[: name.index("_", len("lora_te")) + 1]
        if per_encoder is None:
            rate = rates[0]
        elif prefix in per_encoder:
            rate = rates[min(per_encoder[prefix], len(rates) - 1)]
        else:
            continue
        if rate == 0:
            idle.setdefault(prefix, name)
    return idle


def file_idle(a: dict[str, Legacy], paths, script: str) -> bool:
    """Whether the --network_weights file's text-encoder modules at rate 0 convert as
    train.text_encoder_idle = "kohya" (the idle encoders loaded with the file's modules by
    adapter.init_weights): the scripts and networks idle_kohya takes. create_network builds modules on every
    CLIP encoder; --dim_from_weights only the file's (SDXL's and SD3's CLIP encoder without any gets empty
    targets, map_file_text_encoders, so nothing is idle there)."""
    idle = _idle_modules(a, paths, script)
    return bool(idle) and idle_kohya(a, script, file=True)


def file_held(a: dict[str, Legacy], paths) -> bool:
    """Whether a --network_weights file's text-encoder modules at rate 0 are networks.lora_fa's, which kohya
    keeps in the optimizer at rate 0 with the file's weights: the text encoder trained at
    optimizer.text_encoder_lr = 0 from adapter.init_weights, whatever the clip (the file's modules change its
    output, so an untrained text encoder is no longer the same run)."""
    return bool(_idle_modules(a, paths)) and (lora_fa_holds(a) or bool(lora_fa_kept(a)))


def idle_text_modules(a: dict[str, Legacy], paths, conv: Conversion, script: str = "") -> bool:
    """Report (DBS403) a --network_weights file whose text-encoder modules kohya applies with the file's
    weights and never trains (their rate 0), where train.text_encoder_idle cannot hold them (not file_idle);
    True when reported. An unreadable file is left to the mappings that read it."""
    idle = _idle_modules(a, paths, script)
    if not idle or file_idle(a, paths, script) or lora_fa_holds(a) or lora_fa_kept(a):
        return False  # the text encoder held (or kept) at optimizer.text_encoder_lr = 0 (file_held)
    weights = a["network_weights"]
    from_file = a["dim_from_weights"]
    key = from_file if from_file.value else weights
    first = ", ".join(f"`{n}`" for n in idle.values())
    conv.unsupported(
        key,
        f"`{weights.value}` holds text-encoder modules ({first}) whose text_encoder_lr is 0: kohya's "
        "apply_to keeps them with the file's weights (it reads no rate) and the optimizer leaves them out, "
        "so the text encoder encodes through modules that never train (their gradients still count in "
        "max_grad_norm's clipping); dbspec adapts a text encoder only while it trains. Give them a rate, or "
        "train with --network_train_unet_only (apply_to then drops them)",
    )
    return True


def file_has_clip(a: dict[str, Legacy], paths, script: str) -> bool:
    """Whether kohya's flow network holds CLIP modules for train.text_encoder_idle: False for a
    --dim_from_weights file on flux_train_network.py / sd3_train_network.py holding none (its T5-XXL's
    alone: create_network_from_weights builds the file's modules only); True otherwise, or unread."""
    if script not in _LYCORIS_T5 or not a["dim_from_weights"].value or not a["network_weights"].value:
        return True
    local = paths.local(a["network_weights"].value)
    try:
        names = set(read_weights_header(local)) if local else None
    except (ModelFileError, OSError, ValueError):
        return True
    if names is None:
        return True
    clips = ("lora_te1_", "lora_te2_") if script == "sd3_train_network" else ("lora_te1_",)
    return any(n.startswith(clips) for n in names)


def clipped_idle_text(
    a: dict[str, Legacy], legacy: Legacy, encoder: str, conv: Conversion, not_held: str = ""
) -> bool:
    """Warn (DBS404) that a text encoder whose LoRA modules kohya builds and never trains (its rate 0) is
    converted untrained while max_grad_norm clips, where train.text_encoder_idle cannot hold them (not
    idle_kohya): True when warned (the caller still maps the encoder as
    untrained). train_network.py builds the text encoders' modules whenever --network_train_unet_only is off
    (apply_to reads no rate; a fresh module's lora_up is 0, so the encoder's output is the base's) and runs
    the text encoders under grad, so those modules take gradients (lora_up's are not 0) that
    `accelerator.clip_grad_norm_(network.get_trainable_params(), max_grad_norm)` counts: every module's
    parameters, trained or not. networks.lora, networks.dylora, lycoris.kohya and lora_flux / lora_sd3 leave a
    group at rate 0 out of the optimizer ("NO LR skipping!"), whose zero_grad clears only its own parameters,
    so those gradients add up from step to step (each clip scaling the sum in place); networks.lora_fa keeps
    the group in the optimizer at rate 0 (cleared every step, still clipped: optimizer.text_encoder_lr = 0,
    warned here only where dbspec cannot hold it, `not_held`). Either way kohya's clip
    coefficient counts gradients of modules that never move, stale ones after the first step: dbspec's
    untrained encoder clips the trained modules alone, as kohya's own run with --max_grad_norm 0 or
    --network_train_unet_only leaves them. With max_grad_norm 0 the runs are the same (no warning)."""
    clip = a["max_grad_norm"]
    if not clip.value:
        return False
    module = a["network_module"].value if "network_module" in a else None
    if module == "networks.lora_fa":  # dbspec's optimizer.text_encoder_lr = 0 is that run, not here
        held = "networks.lora_fa's prepare_optimizer_params keeps their group in the optimizer at rate 0" + (
            f" (dbspec's optimizer.text_encoder_lr = 0 is that run elsewhere, not here: {not_held})"
            if not_held
            else ""
        )
    else:
        held = (
            'the optimizer leaves their group out at rate 0 ("NO LR skipping!"), and as optimizer.zero_grad '
            "clears only the optimizer's own parameters, their gradients add up from step to step"
        )
    conv.differs(
        legacy,
        f"converted with {encoder} text encoder untrained and unadapted, as kohya's run with "
        "--max_grad_norm 0 or --network_train_unet_only is. kohya's differs: it still builds "
        f"{encoder} LoRA modules (apply_to reads no rate; fresh, they leave the output the base's) and runs "
        f"that encoder under grad; {held}, yet max_grad_norm {clip.value:g} clips "
        "network.get_trainable_params(), every module's parameters: their gradients (lora_up's are not 0) "
        "count in the total norm, so whenever the clip engages kohya scales the trained modules' steps by "
        "a norm that includes modules which never move. dbspec clips the trained modules' gradients alone",
    )
    return True
