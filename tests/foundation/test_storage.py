"""Storage (hardfocus/storage.py): a commit survives a power cut and a kill mid-write."""

from __future__ import annotations

import json
import os

import pytest


def test_commits_sync_the_file_then_rename_then_sync_the_directory(tmp_path, monkeypatch):
    """What makes a commit survive a power cut: without the fsyncs, a renamed file can come back empty."""
    import fsspec

    from hardfocus import storage

    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "dir" if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    monkeypatch.setattr(storage.os, "replace", replace)
    storage.commit_json(fsspec.filesystem("file"), str(tmp_path / "state.json"), {"a": 1})
    assert calls == [("fsync", "file"), ("rename", "state.json"), ("fsync", "dir")]
    assert json.loads((tmp_path / "state.json").read_text()) == {"a": 1}

    def crash(f):
        f.write(b'{"a": ')
        raise KeyboardInterrupt  # killed mid-write
    with pytest.raises(KeyboardInterrupt):
        storage.commit(fsspec.filesystem("file"), str(tmp_path / "state.json"), crash)
    assert json.loads((tmp_path / "state.json").read_text()) == {"a": 1}  # the previous content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left
