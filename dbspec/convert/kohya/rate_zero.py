"""kohya groups at learning rate 0 that stay in the optimizer, and whether dbspec holds them there (issue 12).

train_db.py's U-Net at `learning_rate 0` and networks.lora_fa's text-encoder group at `text_encoder_lr 0`
are groups kohya keeps in the optimizer at rate 0: whether they stay put is the optimizer's and the
scheduler's business. dbspec holds such a group (`optimizer.lr = 0`, `optimizer.text_encoder_lr = 0`) where
both scale it by its own rate (D-Adaptation and Prodigy: where they leave it out of d and never move it,
compiler/zero_group.py); the spec rule DBS200 (compiler/rules.py held_at_rate_zero) refuses the rest, which
these answers mirror for the converter."""

from __future__ import annotations

from dbspec.compiler.zero_group import ORDER_DEPENDENT, zero_group_moves
from dbspec.convert.common.core import Legacy
from dbspec.convert.common.optimizers import (
    adafactor_flags,
    kohya_optimizer,
    optimizer_settings,
    parse_kohya_args,
)
from dbspec.spec.model import DADAPT_KINDS

Args = dict[str, Legacy]


def adafactor_relative_step(a: Args) -> bool:
    """kohya's Adafactor computes its own LR (relative_step, kohya's default for it) and get_optimizer then
    replaces --lr_scheduler by `adafactor:<learning_rate>` (transformers' AdafactorSchedule)."""
    if str(a["optimizer_type"].value or "").lower() != "adafactor":
        return False
    kwargs, problems = parse_kohya_args(a["optimizer_args"].value or [])
    return not problems and adafactor_flags(kwargs)["relative_step"]


def relative_step_first_rate(a: Args) -> float:
    """Adafactor's relative step at its first step, min(1e-2, 1/sqrt(1)) (min(1e-6 x 1, 1) with
    warmup_init): the rate dbspec writes where kohya pops a group's rate (only the logged initial one)."""
    kwargs, problems = parse_kohya_args(a["optimizer_args"].value or [])
    return 1e-6 if not problems and adafactor_flags(kwargs)["warmup_init"] else 1e-2


def torch_schedule_moves_a_zero_group(a: Args) -> str:
    """Why kohya's torch scheduler (lr_scheduler_type) lifts a group whose base rate is 0, or "": the others
    multiply each group's own rate (StepLR, MultiStepLR, ExponentialLR, LinearLR, ConstantLR, PolynomialLR,
    and the cosine ones with eta_min 0), so a group at 0 stays at 0."""
    if "lr_scheduler_type" not in a or not a["lr_scheduler_type"].value:
        return ""
    cls = str(a["lr_scheduler_type"].value).removeprefix("torch.optim.lr_scheduler.")
    if cls in ("OneCycleLR", "CyclicLR"):
        return f"torch's {cls} sets every group's rate from its own max_lr / base_lr"
    kwargs, problems = parse_kohya_args(a["lr_scheduler_args"].value or [])
    eta_min = kwargs.get("eta_min", 0) if not problems else 0
    if isinstance(eta_min, int | float) and eta_min > 0:
        return f"torch's {cls} lifts every group's rate toward eta_min {eta_min}"
    return ""


def train_db_unet_lifted(a: Args) -> str:
    """torch_schedule_moves_a_zero_group for train_db.py's U-Net group, the first of its [U-Net at
    learning_rate, text encoder at learning_rate_te] (the order of dbspec's groups too): OneCycleLR and
    CyclicLR set its rate from its own bounds (a list's first value, or the one number), so they hold it at 0
    where those are 0 ("")."""
    return _train_db_group_lifted(a, 0)


def train_db_text_lifted(a: Args) -> str:
    """train_db_unet_lifted for its text encoder's group: the U-Net's own group without learning_rate_te,
    else the second (a bound list's second value, or the one number)."""
    return _train_db_group_lifted(a, 0 if a["learning_rate_te"].value is None else 1)


def _train_db_group_lifted(a: Args, index: int) -> str:
    moves = torch_schedule_moves_a_zero_group(a)
    cls = str(a["lr_scheduler_type"].value or "").removeprefix("torch.optim.lr_scheduler.") if moves else ""
    if cls not in ("OneCycleLR", "CyclicLR"):
        return moves
    kwargs, problems = parse_kohya_args(a["lr_scheduler_args"].value or [])
    if problems:
        return moves  # reported where the schedule maps
    keys = ("max_lr", "base_lr") if cls == "CyclicLR" else ("max_lr",)
    mine = [_group_value(value, index) for value in map(kwargs.get, keys)]
    if not all(isinstance(value, int | float) for value in mine):
        return moves  # a bound missing, not a number or not the group's: the schedule's mapping reports it
    return moves if any(mine) else ""


def _group_value(value, index: int):
    """A torch scheduler bound's value for the group at `index`: a list's (None past its end), or the one."""
    if isinstance(value, list | tuple):
        return value[index] if index < len(value) else None
    return value


def train_db_unet_trains(a: Args) -> bool:
    """Whether train_db.py's U-Net is a dbspec denoiser group: at a learning_rate above 0, or at 0 beside a
    text encoder at learning_rate_te above 0 where its gradients count in the clip (held, optimizer.lr = 0)
    or the schedule moves it (optimizer.denoiser_at_zero = "keep"), or at 0 with no text encoder training
    (stop_text_encoder_training 0 or below) where the schedule moves it alone, or at 0 beside a training text
    encoder at rate 0 too (learning_rate_te 0 or none) where the schedule moves either (kept or held); else
    train.denoiser = false (or nothing trains: the rates' mapping reports it)."""
    if a["learning_rate"].value:
        return True
    stop = a["stop_text_encoder_training"].value
    if stop is not None and int(stop) <= 0 and train_db_unet_lifted(a):
        return True
    rate_te = a["learning_rate_te"].value if "learning_rate_te" in a else None
    if not rate_te and (stop is None or int(stop) > 0):
        return bool(train_db_unet_lifted(a) or train_db_text_lifted(a))
    return bool(rate_te) and bool(a["max_grad_norm"].value or train_db_unet_lifted(a))


def lora_fa_not_held(a: Args) -> str:
    """Why kohya's networks.lora_fa text-encoder group at rate 0 is no group dbspec holds at rate 0 (the spec
    rule DBS200 refuses optimizer.text_encoder_lr = 0 alike), or "": D-Adaptation's classes and Prodigy where
    they step such a group or let the groups' order change the run (compiler/zero_group.py, on kohya's
    optimizer_args over the class's defaults), Adafactor's relative step ignores
    the rates (kohya removes them; lora_fa's group at rate 0 it trains was lifted before,
    group_lists.relative_step_lift), and torch's OneCycleLR / CyclicLR (a rate 0 they lift was replaced
    before, group_lists.lift_kept_rates) or an eta_min above 0 set the group's rate themselves."""
    kind = kohya_optimizer(str(a["optimizer_type"].value or "")).kind
    if kind in DADAPT_KINDS or kind == "prodigy":
        moves = _zero_group_moves(a, kind)
        if moves:
            return moves
    if adafactor_relative_step(a):
        return "Adafactor's relative step ignores the groups' rates (kohya removes them), so the group moves"
    return torch_schedule_moves_a_zero_group(a)


def _zero_group_moves(a: Args, kind: str) -> str:
    """zero_group_moves on kohya's D-Adaptation / Prodigy class as optimizer_args build it (the class's own
    defaults beneath: DAdaptAdam's decouple False, Prodigy's True); arguments that do not parse are
    reported where the optimizer maps."""
    kwargs, problems = parse_kohya_args(a["optimizer_args"].value or [])
    if problems:
        return ""
    values = optimizer_settings(kind, kwargs).values
    decouple = bool(values.get("decouple", kind == "prodigy"))
    return zero_group_moves(
        kind, float(values["weight_decay"]), values.get("betas", [0.9]), decouple, values.get("momentum", 0)
    )


def lora_fa_kept(a: Args) -> str:
    """Why kohya's networks.lora_fa text-encoder group at rate 0 moves where dbspec's
    `optimizer.text_encoder_at_zero = "keep"` is that run (the same class and schedule on the same groups, the
    group adding nothing to an estimate of d, so their order does not matter; DAdaptLion's in kohya's group
    order, lora_fa_order), or "": lora_fa_not_held's reasons but DAdaptAdaGrad / DAdaptAdan / DAdaptAdanIP
    (ORDER_DEPENDENT: kohya's order trains nothing, lora_fa_trains_nothing) and Adafactor's relative step
    (its rate lifted before: group_lists.relative_step_lift), with lora_fa_holds' other conditions."""
    kind = kohya_optimizer(str(a["optimizer_type"].value or "")).kind
    if kind in ORDER_DEPENDENT and not lora_fa_order(a):
        return ""
    if adafactor_relative_step(a) or not _lora_fa_text_group(a):
        return ""
    return lora_fa_not_held(a)


def lora_fa_order(a: Args) -> bool:
    """Whether kohya's networks.lora_fa text-encoder group at rate 0 is dbspec's kept group only in kohya's
    group order, the text encoders' first (optimizer.group_order = "text_encoders_first"): DAdaptLion steps
    it by d x the U-Net's rate and sums both groups into its estimate of d in their order (the spec rule
    DBS200 allows it only so; tests/runtime/test_optim_zero_group.py steps the real class in both)."""
    kind = kohya_optimizer(str(a["optimizer_type"].value or "")).kind
    return kind == "dadapt_lion" and _lora_fa_text_group(a)


def kept_group_moves(a: Args) -> bool:
    """Whether lora_fa_kept's group moves: not where its reason is torch's OneCycleLR / CyclicLR, which by
    now hold it at 0 (a rate they lift was replaced before, group_lists.lift_kept_rates)."""
    cls = str(a["lr_scheduler_type"].value or "") if "lr_scheduler_type" in a else ""
    schedule_set = cls.removeprefix("torch.optim.lr_scheduler.") in ("OneCycleLR", "CyclicLR")
    return bool(lora_fa_kept(a)) and not (schedule_set and lora_fa_kept(a).startswith("torch's"))


def lora_fa_trains_nothing(a: Args) -> str:
    """Why kohya's networks.lora_fa run with its text-encoder group at rate 0 trains nothing at all, or "":
    that group comes first in its optimizer, and dadaptation's DAdaptAdaGrad, DAdaptAdan and DAdaptAdanIP
    step every group by d x the first group's rate (0), estimating no d (checked by stepping the real classes
    in kohya's order, tests/runtime/test_optim_zero_group.py)."""
    kind = kohya_optimizer(str(a["optimizer_type"].value or "")).kind
    if kind not in ORDER_DEPENDENT or kind == "dadapt_lion" or not _lora_fa_text_group(a):
        return ""
    return (
        "networks.lora_fa puts its text-encoder group, at rate 0, first in the optimizer, and dadaptation's "
        f"{kind} steps every group by d x the first group's rate: kohya's run trains nothing, the U-Net "
        "included"
    )


def _lora_fa_text_group(a: Args) -> bool:
    """networks.lora_fa with its text encoders' group beside a U-Net group at a positive rate."""
    module = a["network_module"].value if "network_module" in a else None
    unet = a["unet_lr"] if a["unet_lr"].value is not None else a["learning_rate"]
    return (
        module == "networks.lora_fa" and bool(unet.value) and not a["network_train_text_encoder_only"].value
    )


def lora_fa_holds(a: Args) -> bool:
    """Whether kohya's networks.lora_fa text-encoder group at rate 0 is dbspec's text encoder held at
    optimizer.text_encoder_lr = 0: its modules are there (not --network_train_text_encoder_only, which
    leaves the U-Net out), the U-Net trains at a positive rate, and the optimizer and schedule hold the
    group (lora_fa_not_held)."""
    return _lora_fa_text_group(a) and not lora_fa_not_held(a)
