"""optimizer.split: one optimizer and one LR schedule per chunk of the trained tensors (kohya's sdxl_train.py
--fused_optimizer_groups).

kohya steps each chunk's optimizer from gradient hooks as soon as the chunk's last gradient arrives; stepping
every chunk's optimizer after the backward pass is the same arithmetic (each chunk reads only its own
gradients), and dbspec keeps its own gradient clipping before the step. The chunks are
`dbspec.plan.split.split_chunks` of the tensors in sequence: the plan's parameter groups in order, the
denoiser's tensors in the original layout's order when the plan says so (`original_order`, kohya's SDXL UNet).

`optimizer.split_train = "first"` steps the first chunk's optimizer alone (kohya hooks its fused Adafactor
step to its first optimizer only when --fused_backward_pass comes with the groups); `split_first_step =
"micro_batch"` steps the first chunk's optimizer after every micro-batch from that micro-batch's gradient and
clears it (kohya's first optimizer is not accelerate's wrapper, which defers the others' step and zero_grad to
the last micro-batch), the loop calling `step_first_chunk` between micro-batches.

`precision.fp16_gradients = "scaled_first"` (kohya's --fused_optimizer_groups under fp16 mixed precision, no
clipping): the first chunk's optimizer (kohya's bare `optimizers[0]`) steps from the still-scaled gradients,
never skipped, and the later ones (accelerate's wrappers in kohya) each through the grad scaler on its own
(`ScaledFirstGradScaler.chunk_step`: unscale by the scale at that moment, skip on inf/NaN, update the scale),
in the order their chunks' last gradients arrive in backward, which post-accumulate-grad hooks record as
kohya's hooks count them; a chunk whose step was skipped does not step its LR schedule either (accelerate's
AcceleratedScheduler). Stepping after backward in that order is the same arithmetic as kohya's stepping
inside it: each chunk reads only its own gradients, and the loss was scaled before backward began.

`SplitOptimizer` holds the chunk optimizers behind one optimizer's face (param_groups, step, zero_grad,
state_dict), so accelerate, the grad scaler, the loop and the checkpoints see one optimizer; its state_dict
holds every chunk's state under SPLIT_KEY. `SplitScheduler` steps one schedule per chunk (identical curves).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

import torch

from dbspec.plan.model import Plan
from dbspec.plan.split import split_chunks
from dbspec.runtime.families.original_order import original_order
from dbspec.runtime.optim import OptimizerError, make_lr_scheduler, make_optimizer
from dbspec.runtime.rounding import (
    ROUNDING_SEED_OFFSET,
    StochasticRoundingOptimizer,
    load_keeping_state_dtypes,
)

SPLIT_KEY = "split_optimizers"  # the state_dict key holding every chunk optimizer's state, in chunk order


class SplitOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one. `chunks`: per optimizer, what it holds ("denoiser 599 (lr 1)",
    "denoiser 482 + text_encoder 10 (lr 1)"), for the run's note."""

    def __init__(self, optimizers: list, chunks: list[str], stepping: int | None = None) -> None:
        # No super().__init__: the chunk optimizers own the groups and state; param_groups lists theirs.
        self.optimizers = optimizers
        self.chunks = chunks
        # how many chunks step, from the first (split_train = "first": 1); the rest keep their weights
        self.stepping = len(optimizers) if stepping is None else stepping
        self.defaults = optimizers[0].defaults
        self.param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        # fp16_gradients = "scaled_first": the grad scaler the later chunks step through, each chunk's count
        # of gradients arrived this micro-batch, the chunks complete in arrival order, which were skipped
        self.scaler = None
        self._sizes = [sum(len(g["params"]) for g in o.param_groups) for o in optimizers]
        self._arrived = [0] * len(optimizers)
        self._complete: list[int] = []
        self.skipped = [False] * len(optimizers)

    def scale_later_chunks(self, scaler) -> None:
        """fp16_gradients = "scaled_first": step the chunks after the first through `scaler` (a
        ScaledFirstGradScaler) one by one, in the order backward completes their gradients."""
        self.scaler = scaler
        for index, optimizer in enumerate(self.optimizers):
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.register_post_accumulate_grad_hook(lambda _p, index=index: self._arrive(index))

    def _arrive(self, index: int) -> None:  # kohya's optimizer_hook counter
        self._arrived[index] += 1
        if self._arrived[index] == self._sizes[index]:
            self._complete.append(index)

    def _forget_arrivals(self) -> None:  # kohya resets its counters before each micro-batch
        self._arrived = [0] * len(self.optimizers)
        self._complete = []

    @property
    def state(self) -> dict:  # every chunk's per-parameter state (read: the dicts are the live ones)
        return {param: held for optimizer in self.optimizers for param, held in optimizer.state.items()}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        if closure is not None:
            raise ValueError("the split optimizer's step takes no closure")
        if self.scaler is None:
            for optimizer in self.optimizers[: self.stepping]:
                optimizer.step()
            return
        # scaled_first: the first from the scaled gradients, the later ones through the scaler as backward
        # completed them (any that never completed, a tensor without gradient, after those, in order)
        self.skipped = [False] * len(self.optimizers)
        self.optimizers[0].step()
        later = [i for i in self._complete if i > 0]
        for index in later + [i for i in range(1, self.stepping) if i not in later]:
            self.skipped[index] = not self.scaler.chunk_step(self.optimizers[index])
        self._forget_arrivals()

    @torch.no_grad()
    def step_first_chunk(self) -> None:
        """The first chunk's optimizer steps from the gradients it holds now, which it then clears
        (optimizer.split_first_step = "micro_batch", between micro-batches)."""
        self.optimizers[0].step()
        self.optimizers[0].zero_grad(set_to_none=True)
        self._forget_arrivals()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._forget_arrivals()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Every chunk's state; "state" and "param_groups" stay empty (nothing else reads them)."""
        return {"state": {}, "param_groups": [], SPLIT_KEY: [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get(SPLIT_KEY)
        if saved is None or len(saved) != len(self.optimizers):
            found = "one optimizer's" if saved is None else f"{len(saved)} optimizers'"
            raise ValueError(
                f"the checkpoint holds {found} state; this run splits its tensors into "
                f"{len(self.optimizers)} optimizers (optimizer.split)"
            )
        for optimizer, state in zip(self.optimizers, saved, strict=True):
            load_keeping_state_dtypes(optimizer, state)

    def train(self) -> None:  # schedule-free optimizers: training weights (accelerate and averaged_weights)
        for optimizer in self.optimizers:
            _inner(optimizer).train()

    def eval(self) -> None:  # schedule-free optimizers: averaged weights
        for optimizer in self.optimizers:
            _inner(optimizer).eval()

    def __repr__(self) -> str:
        return f"SplitOptimizer({len(self.optimizers)} x {self.optimizers[0]!r})"


def _inner(optimizer):
    return optimizer.inner if isinstance(optimizer, StochasticRoundingOptimizer) else optimizer


class SplitScheduler:
    """One LR schedule per chunk optimizer, stepped together; get_last_lr lists every group's rate. A chunk
    whose step the grad scaler skipped (`split.skipped`, fp16_gradients = "scaled_first") keeps its rate, as
    accelerate's AcceleratedScheduler does for its own optimizer."""

    def __init__(self, schedulers: list, stepping: int | None = None, split: SplitOptimizer | None = None):
        self.schedulers = schedulers
        self.stepping = len(schedulers) if stepping is None else stepping  # SplitOptimizer.stepping
        self.split = split

    def step(self) -> None:
        for index, scheduler in enumerate(self.schedulers):
            if self.split is not None and self.split.skipped[index]:
                continue
            with warnings.catch_warnings():
                if (
                    index >= self.stepping
                ):  # split_train = "first": its optimizer never steps (kohya's neither)
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()

    def get_last_lr(self) -> list:
        return [lr for scheduler in self.schedulers for lr in scheduler.get_last_lr()]

    def state_dict(self) -> dict[str, Any]:
        return {SPLIT_KEY: [scheduler.state_dict() for scheduler in self.schedulers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for scheduler, state in zip(self.schedulers, state_dict[SPLIT_KEY], strict=True):
            scheduler.load_state_dict(state)


def in_split_order(groups: list[dict], plan: Plan, unet: torch.nn.Module) -> list[dict]:
    """The groups with the denoiser's tensors in the original layout's order when the plan says so (kohya's
    SDXL UNet registers them so), within each of optimizer.blocks' groups too (kohya's
    get_block_params_to_optimize walks its UNet's parameters into the blocks, which follow in index order);
    the groups as given otherwise."""
    if plan.optimizer.split_order != "original":
        return groups
    rank = {id(param): index for index, (_, param) in enumerate(original_order(unet))}
    return [
        {**group, "params": sorted(group["params"], key=lambda p: rank[id(p)])}
        if group.get("name") == "denoiser" or str(group.get("name")).startswith("denoiser_block")
        else group
        for group in groups
    ]


def make_split(
    groups: list[dict], plan: Plan, unet: torch.nn.Module, device
) -> tuple[SplitOptimizer, SplitScheduler]:
    """The chunk optimizers over `groups` (the plan's groups in order) and their schedules. A chunk spanning
    several groups of one rate keeps them as its own groups (their names and rates), in order."""
    groups = in_split_order(groups, plan, unet)
    flat = [(index, param) for index, group in enumerate(groups) for param in group["params"]]
    chunks = split_chunks([groups[index]["lr"] for index, _ in flat], plan.optimizer.split)
    _check_planned(chunks, [groups[index]["lr"] for index, _ in flat], plan)
    generator = None
    if plan.precision.stochastic_rounding:  # one rounding stream through the chunks, as one optimizer's
        generator = torch.Generator(device=device).manual_seed(plan.schedule.seed + ROUNDING_SEED_OFFSET)
    optimizers, spans = [], []
    for chunk in chunks:
        parts: list[tuple[int, list]] = []
        for index, param in (flat[i] for i in chunk):
            if parts and parts[-1][0] == index:
                parts[-1][1].append(param)
            else:
                parts.append((index, [param]))
        chunk_groups = [
            {**{k: v for k, v in groups[index].items() if k != "params"}, "params": params}
            for index, params in parts
        ]
        optimizer = make_optimizer(chunk_groups, plan.optimizer)
        if generator is not None:
            optimizer = StochasticRoundingOptimizer(optimizer, generator)
        optimizers.append(optimizer)
        spans.append(
            " + ".join(f"{group.get('name', 'group')} {len(group['params'])}" for group in chunk_groups)
            + f" (lr {chunk_groups[0]['lr']:g})"
        )
    schedulers = [make_lr_scheduler(optimizer, plan.schedule) for optimizer in optimizers]
    stepping = 1 if plan.optimizer.split_train == "first" else len(optimizers)
    split = SplitOptimizer(optimizers, spans, stepping)
    return split, SplitScheduler(schedulers, stepping, split)


def _split_of(optimizer) -> SplitOptimizer | None:
    while not isinstance(optimizer, SplitOptimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer  # accelerate's wrapper
    return optimizer if isinstance(optimizer, SplitOptimizer) else None


def step_first_chunk(optimizer) -> None:
    """optimizer.split_first_step = "micro_batch": step the first chunk's optimizer (behind accelerate's
    wrapper) between micro-batches and clear its gradients, as kohya's unwrapped first optimizer does."""
    split = _split_of(optimizer)
    if split is None:
        raise OptimizerError("optimizer.split_first_step needs optimizer.split > 1 (DBS554)")
    split.step_first_chunk()


def scale_later_chunks(optimizer, scaler) -> None:
    """precision.fp16_gradients = "scaled_first": the split optimizer (behind accelerate's wrapper) steps its
    later chunks through `scaler` one by one."""
    split = _split_of(optimizer)
    if split is None:
        raise OptimizerError('precision.fp16_gradients = "scaled_first" needs optimizer.split > 1 (DBS555)')
    split.scale_later_chunks(scaler)


def run_optimizer_chunks(optimizer) -> list[str]:
    """What each chunk optimizer holds, in order; [] for one optimizer."""
    split = _split_of(optimizer)
    return list(split.chunks) if split is not None else []


def _check_planned(chunks: list[range], lrs: list[float], plan: Plan) -> None:
    """The chunks cut from the loaded models are the plan's (when the plan could count the tensors)."""
    planned = [(c.tensors, c.lr) for c in plan.optimizer.split_chunks]
    cut = [(len(chunk), lrs[chunk[0]]) for chunk in chunks]
    if planned and planned != cut:
        raise OptimizerError(
            f"optimizer.split: the plan cut {sum(n for n, _ in planned)} trained tensors into chunks of "
            f"{', '.join(str(n) for n, _ in planned)}, the loaded models hold {len(lrs)} in chunks of "
            f"{', '.join(str(n) for n, _ in cut)}: plan the spec again (a dbspec bug if the model did not "
            "change, please report it)"
        )


def chunk_step_sizes(optimizer) -> dict[str, float]:
    """Prodigy's and D-Adaptation's d x lr of every chunk after the first (`d*lr` is the first's):
    `d*lr/1`, `d*lr/2`, ...; empty for one optimizer or optimizers without d."""
    split = _split_of(optimizer)
    if split is None:
        return {}
    metrics = {}
    for index, chunk in enumerate(split.optimizers[1:], start=1):
        group = chunk.param_groups[0]
        if "d" in group:
            metrics[f"d*lr/{index}"] = float(group["d"] * group["lr"])
    return metrics
