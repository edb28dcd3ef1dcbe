"""`hardfocus demo-corpus --kind chat`: the conversation corpus built from the chitchat-dataset package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.demo_corpus import CHAT_FREE_GROUP, CHAT_NOISE_KINDS, CHAT_THEMES, build_demo_corpus, chat_group, chat_messages

NOISE_FRAC = 0.3
MAX_TURNS = 8


def _read(out: Path) -> dict[str, dict[str, list[dict]]]:
    """{split: {group: rows}}."""
    return {
        split: {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted((out / split).glob("*.jsonl"))}
        for split in ("train", "heldout")
    }


def _assistant(row: dict) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] == "assistant"]


def _user(row: dict) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] == "user"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat")
    counts = build_demo_corpus(out, docs_per_group=10, seed=0, noise_frac=NOISE_FRAC, kind="chat", max_turns=MAX_TURNS)
    return counts, _read(out)


def test_groups_counts_and_fields(corpus):
    counts, rows = corpus
    assert set(rows["train"]) == set(rows["heldout"]) == set(CHAT_THEMES) | {CHAT_FREE_GROUP}
    assert sum(counts["skipped"].values()) > 0  # one-sender conversations exist and are counted, not written
    for split in ("train", "heldout"):
        for group, group_rows in rows[split].items():
            assert counts[split][group] == len(group_rows)
            for row in group_rows:
                assert set(row) == {"id", "group", "messages", "noise"} and row["group"] == group
    assert all(len(rows["heldout"][g]) == 2 for g in rows["heldout"])  # round(10 * 0.2)


def test_messages_alternate_from_user_with_a_reply(corpus):
    _, rows = corpus
    for split in rows.values():
        for group_rows in split.values():
            for row in group_rows:
                roles = [m["role"] for m in row["messages"]]
                assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
                assert "assistant" in roles and len(roles) <= MAX_TURNS
                assert all(isinstance(m["content"], str) and m["content"].strip() for m in row["messages"])


def test_heldout_is_by_conversation(corpus):
    _, rows = corpus
    train_ids = {r["id"].rsplit("-noise", 1)[0] for g in rows["train"].values() for r in g}
    heldout_ids = [r["id"] for g in rows["heldout"].values() for r in g]
    assert len(heldout_ids) == len(set(heldout_ids))
    assert not train_ids & set(heldout_ids)
    assert all(r["noise"] is None for g in rows["heldout"].values() for r in g)


def test_noise_share_of_training_rows(corpus):
    counts, rows = corpus
    kinds = set()
    for group, group_rows in rows["train"].items():
        noisy = [r for r in group_rows if r["noise"] is not None]
        kinds |= {r["noise"] for r in noisy}
        assert counts["noise"][group] == len(noisy)
        assert abs(len(noisy) / len(group_rows) - NOISE_FRAC) <= 1 / len(group_rows)
        n_swapped = sum(r["noise"] == "swapped" for r in noisy)
        assert abs(n_swapped - len(noisy) / 2) <= 1
        ids = [r["id"] for r in group_rows]
        assert len(ids) == len(set(ids))
    assert kinds == set(CHAT_NOISE_KINDS)


def test_noise_rows_alter_only_the_replies_of_a_training_conversation(corpus):
    _, rows = corpus
    for group_rows in rows["train"].values():
        clean = {r["id"]: r for r in group_rows if r["noise"] is None}
        for row in (r for r in group_rows if r["noise"] is not None):
            source = clean[row["id"].rsplit("-noise", 1)[0]]  # the clean original stays in, same group
            assert [m["role"] for m in row["messages"]] == [m["role"] for m in source["messages"]]
            assert _user(row) == _user(source)
            if row["noise"] == "swapped":
                assert _assistant(row) != _assistant(source)
                donors = [
                    d for d in clean.values()
                    if d["id"] != source["id"]
                    and [_assistant(d)[j % len(_assistant(d))] for j in range(len(_assistant(row)))] == _assistant(row)
                ]
                assert donors, row["id"]
            else:
                assert [sorted(a.split()) for a in _assistant(row)] == [sorted(a.split()) for a in _assistant(source)]
                if any(len(set(a.split())) > 1 for a in _assistant(source)):
                    assert _assistant(row) != _assistant(source)


def test_seed_reproducible(tmp_path):
    def files(seed: int, name: str) -> dict[str, bytes]:
        out = tmp_path / name
        build_demo_corpus(out, docs_per_group=5, seed=seed, noise_frac=0.2, kind="chat")
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.jsonl"))}

    first = files(1, "a")
    assert first == files(1, "b")
    other = files(2, "c")
    assert other.keys() == first.keys() and other != first


def test_rebuilding_the_same_corpus_leaves_its_files_alone(tmp_path):
    """A file's modification time is part of what its scores were computed from: a rerun of `make demo` rebuilds
    the corpus, and must not make every shard look changed (and rescored); another seed rewrites them."""
    def stamps() -> dict[str, int]:
        return {str(p.relative_to(tmp_path)): p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.jsonl"))}

    build_demo_corpus(tmp_path, docs_per_group=5, seed=1, noise_frac=0.2, kind="chat")
    before = stamps()
    build_demo_corpus(tmp_path, docs_per_group=5, seed=1, noise_frac=0.2, kind="chat")
    assert stamps() == before
    build_demo_corpus(tmp_path, docs_per_group=5, seed=2, noise_frac=0.2, kind="chat")
    assert all(stamps()[k] != before[k] for k in before)


def test_chat_messages_and_groups():
    def turn(sender: str, *texts: str) -> list[dict]:
        return [{"sender": sender, "text": t, "timestamp": ""} for t in texts]

    assert chat_messages([turn("a", "hi"), turn("a", "anyone?")], 12) == []  # one sender: skipped
    assert chat_messages([turn("a", "hi", "there"), turn("b", " "), turn("a", "again"), turn("b", "yo"), turn("a", "bye")], 12) == [
        {"role": "user", "content": "hi\nthere\nagain"},  # the empty turn is dropped and the same sender merged
        {"role": "assistant", "content": "yo"},
    ]  # the trailing user turn has no reply
    long = [turn("ab"[i % 2], str(i)) for i in range(10)]
    assert [m["content"] for m in chat_messages(long, 5)] == ["0", "1", "2", "3"]
    assert chat_group(CHAT_THEMES["personal"][0]) == "personal"
    assert chat_group(None) == chat_group("") == chat_group("an unknown prompt") == CHAT_FREE_GROUP
    with pytest.raises(ValueError):
        build_demo_corpus("unused", kind="chat", max_turns=1)
    with pytest.raises(ValueError):
        build_demo_corpus("unused", kind="audio")


def test_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "chat"
    result = runner.invoke(app, ["-q", "demo-corpus", str(out), "--kind", "chat", "--docs-per-group", "5", "--noise-frac", "0.2",
                                 "--max-turns", "4", "--seed", "3"])
    assert result.exit_code == 0, result.output
    n_groups = len(CHAT_THEMES) + 1
    assert f"training conversations (5 injected noise) and 5 held-out conversations in {n_groups} groups" in result.output
    rows = _read(out)
    assert len(rows["train"]) == n_groups and all(len(r["messages"]) <= 4 for g in rows["train"].values() for r in g)
    bad = runner.invoke(app, ["demo-corpus", str(tmp_path / "x"), "--kind", "audio"])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()
