"""The Parquet contract of ``selected/``, as selection writes it.

Defined in :mod:`scoring.foundation.selected`, the base package, so that training checks the same contract
without importing selection (a stage never imports another stage).
"""

from scoring.foundation.selected import OPTIONAL_COLUMNS, SELECTED_SCHEMA, SUMMARY_FILE, check_selected_schema, selected_schema

__all__ = ["OPTIONAL_COLUMNS", "SELECTED_SCHEMA", "SUMMARY_FILE", "check_selected_schema", "selected_schema"]
