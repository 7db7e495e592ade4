"""Training: the `Trainer` loop (trainer.py), its config as plain data (config.py), atomic checkpoints
(checkpoint.py) and running under torchrun (distributed.py)."""
from .config import TrainConfig, TrainConfigError, load_toml
from .trainer import (
    Trainer, enable_gradient_checkpointing, load_trained_state, lr_factor, read_log, seed_everything, token_loss_sum,
    trained_state,
)

__all__ = [
    "Trainer", "TrainConfig", "TrainConfigError", "load_toml", "lr_factor", "token_loss_sum", "trained_state",
    "load_trained_state", "enable_gradient_checkpointing", "read_log", "seed_everything",
]
