"""Training stage: light continual training on weighted shards (static and online IR-DRO), HF Trainer or Ray Train."""

from training.config import TrainConfig
from training.job import TrainResult, train
from training.trainer import WeightedTrainer
from training.weighting import StepWeighter, per_sample_nll

__all__ = ["StepWeighter", "TrainConfig", "TrainResult", "WeightedTrainer", "per_sample_nll", "train"]
