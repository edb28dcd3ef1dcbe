"""The scores/ directory's listing: parts, markers and leftovers told apart by name, locally and on S3 alike."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from scoring.output import ScoresDir


@pytest.fixture(params=["local", "s3"])
def scores_url(request, tmp_path) -> str:
    return str(tmp_path / "scores") if request.param == "local" else request.getfixturevalue("s3_url") + "/scores"


def test_parts_markers_and_leftovers_are_told_apart(scores_url):
    out = ScoresDir(scores_url)
    out.create()
    table = pa.table({"x": [1, 2]})
    for name in ("part-aaa-0000000000-0000000002.parquet", "part-aaa-0000000002-0000000004.parquet"):
        out.write_part(name, table)
    out.write_shard_done("aaa", {"rows": 4})
    # what a killed run leaves: a temporary part and a temporary (cut short) marker, never finished files
    out.fs.pipe_file(out.join(".tmp-1234-part-aaa-0000000004-0000000006.parquet"), b"PAR1")
    out.fs.pipe_file(out.join("done/.tmp-5678-bbb.json"), b'{"rows": ')
    out.write_json("job.json", {"identity": {}})

    assert out.parts() == ["part-aaa-0000000000-0000000002.parquet", "part-aaa-0000000002-0000000004.parquet"]
    assert out.shard_done_markers() == {"aaa": {"rows": 4}}  # the cut-short marker is not parsed
    names = out.names()
    assert {"job.json", ".tmp-1234-part-aaa-0000000004-0000000006.parquet"} <= set(names)
    assert out.parts(names) == out.parts()

    assert out.remove_leftovers(names) == 2
    assert not any(n.startswith(".tmp-") for n in out.names() + out.names("done"))
    assert json.loads(out.fs.cat_file(out.join("done/aaa.json"))) == {"rows": 4}
    assert out.names("no-such-folder") == []
