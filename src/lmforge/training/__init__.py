"""Training: the loop, the schedule, checkpoints and resumption."""

from lmforge.training.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
