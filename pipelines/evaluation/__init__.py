"""``hardfocus eval``, in one home: its config (:mod:`.config`), the job that scores the held-out shards with each
model (:mod:`.job`) and the per-group tables that compare them (:mod:`.tables`). Exports are imported on first use,
so the CLI reads :class:`EvalConfig` without importing the scoring stage."""

from typing import TYPE_CHECKING

from hardfocus.lazy import lazy_exports

_EXPORTS = {
    "EvalConfig": "pipelines.evaluation.config",
    "EVAL_FILE": "pipelines.evaluation.job",
    "EvalResult": "pipelines.evaluation.job",
    "evaluate": "pipelines.evaluation.job",
    "ModelEval": "pipelines.evaluation.tables",
    "comparison_table": "pipelines.evaluation.tables",
    "group_perplexity": "pipelines.evaluation.tables",
    "load_evaluation": "pipelines.evaluation.tables",
}
__all__ = ["EVAL_FILE", "EvalConfig", "EvalResult", "ModelEval", "comparison_table", "evaluate", "group_perplexity",
           "load_evaluation"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from pipelines.evaluation.config import EvalConfig
    from pipelines.evaluation.job import EVAL_FILE, EvalResult, evaluate
    from pipelines.evaluation.tables import ModelEval, comparison_table, group_perplexity, load_evaluation
