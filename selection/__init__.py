"""Selection stage: MidRanking band and IR-DRO weights over scores/, training shards and a report."""

from typing import TYPE_CHECKING

from hardfocus.lazy import lazy_exports

_EXPORTS = {
    "SelectConfig": "selection.config",
    "SelectResult": "selection.job",
    "SelectionSummary": "selection.summary",
    "build_report": "selection.job",
    "irdro_weights": "selection.irdro",
    "select": "selection.job",
}
__all__ = ["SelectConfig", "SelectResult", "SelectionSummary", "build_report", "irdro_weights", "select"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from selection.config import SelectConfig
    from selection.irdro import irdro_weights
    from selection.job import SelectResult, build_report, select
    from selection.summary import SelectionSummary
