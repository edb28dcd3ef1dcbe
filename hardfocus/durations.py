"""How every stage writes a span of time for a person: progress lines, ETAs, the run's summary."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """``1h02m03s`` / ``4m05s`` / ``6s``: read at a glance, and the same in every stage."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
