"""What each stage's output directory holds: its files, the Parquet schema of its parts, its manifest.

- :mod:`~hardfocus.contracts.scores`: ``scores/`` (one row per input row, always);
- :mod:`~hardfocus.contracts.selected`: the training parts of ``selected/``;
- :mod:`~hardfocus.contracts.decisions`: ``selected/decisions/`` (every scored row's band, and why).

Every part of each carries the stamp of :mod:`hardfocus.parts`.
"""
