"""Training stage: light continual training on weighted shards (static and online IR-DRO), HF Trainer or Ray Train."""

from typing import TYPE_CHECKING

from hardfocus.lazy import lazy_exports

_EXPORTS = {
    "StepWeighter": "training.weighting",
    "TrainConfig": "training.config",
    "TrainResult": "training.output",
    "WeightedTrainer": "training.trainer",
    "per_sample_nll": "training.weighting",
    "train": "training.job",
}
__all__ = ["StepWeighter", "TrainConfig", "TrainResult", "WeightedTrainer", "per_sample_nll", "train"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.job import train
    from training.output import TrainResult
    from training.trainer import WeightedTrainer
    from training.weighting import StepWeighter, per_sample_nll
