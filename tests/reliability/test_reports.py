"""Names from the data reach no parser: group names and paths are drawn as text in every plot (matplotlib would
parse ``$...$`` as math and fail after ranking) and escaped in report.html (issue finding 12)."""

from __future__ import annotations

import numpy as np
import pytest

import selection.report as report
from selection import SelectConfig, select
from tests.selection.fake_scores import write_scores
from tests.selection.test_report import Page

GROUP_NAMES = ["x $\\notacommand$ y", "<script>alert(1)</script>", "a_b & c"]


@pytest.mark.parametrize("per_group", [False, True], ids=["global", "per_group"])
def test_names_from_the_data_are_shown_as_they_are(tmp_path, monkeypatch, per_group):
    """Group names reach no parser: matplotlib draws them as text (no mathtext), the page escapes them."""
    rng = np.random.default_rng(3)
    groups = [GROUP_NAMES[i % 3] for i in range(90)]
    write_scores(tmp_path / "scores", rng.gamma(4, 0.5, 90).tolist(), groups)
    figures = {}
    real = report.report_figures
    monkeypatch.setattr(report, "report_figures", lambda *args: figures.update(real(*args)) or figures)
    out = tmp_path / "sel $x^2$"  # a path from the user: the page's title
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(out), per_group=per_group), progress=False)
    text = (out / "report.html").read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert {row[0] for row in page.tables["groups"][1:]} == set(GROUP_NAMES)  # escaped, so read back as written
    from matplotlib.text import Text

    drawn = [t for fig in figures.values() for t in fig.findobj(Text) if t.get_text()]
    shown = {t.get_text() for t in drawn}
    for name in GROUP_NAMES:  # in the legends, the box plot's tick labels and (per group) the panels' titles
        assert any(name in s for s in shown), (name, sorted(shown))
    assert not [t.get_text() for t in drawn if "$" in t.get_text() and t.get_parse_math()]
