"""Selection stage: MidRanking band and IR-DRO weights over scores/, training shards and a report."""

from selection.config import SelectConfig
from selection.irdro import irdro_weights
from selection.job import SelectResult, build_report, select
from selection.summary import SelectionSummary

__all__ = ["SelectConfig", "SelectResult", "SelectionSummary", "build_report", "irdro_weights", "select"]
