"""TrainState keeps training_state.pt's format: the keys (and their order) checkpoints were
always saved with."""

import torch

from dbspec.runtime.state import TrainState

# The keys of training_state.pt before TrainState existed: checkpoints saved then must still resume.
SAVED_KEYS = [
    "trainable",
    "optimizer",
    "lr_scheduler",
    "scaler",
    "sampler",
    "generator",
    "rng",
    "step",
    "ema",
    "run_hash",
    "plan",
]


def test_checkpoint_keys_are_unchanged():
    saved = {key: None for key in SAVED_KEYS} | {"step": 7, "generator": torch.Generator().get_state()}
    state = TrainState.from_checkpoint(saved)  # a checkpoint saved before the optional keys were kept
    added = [
        "generators",
        "scaled_pos_sides",
        "held_grads",
        "frozen_down_grads",
        "idle_grads",
        "ggpo",
        "eval_record",
    ]
    assert all(getattr(state, key) is None for key in added)
    assert list(state.to_checkpoint()) == [*SAVED_KEYS, *added]  # new keys come last
    assert state.step == 7
    assert torch.equal(state.to_checkpoint()["generator"], saved["generator"])
