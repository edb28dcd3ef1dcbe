"""Training on raw shards (training/raw_shards.py): the tokenisation cache is keyed by what the shards hold and how
they are rendered (their directory, their bytes, the chat template's text), shared by concurrent runs, rebuilt when
damaged; the output never inside the shards it reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hardfocus.errors import HardfocusError
from tests.conftest import write_jsonl
from tests.scoring.helpers import TEXTS, write_texts


def _raw_train_cfg(tmp_path, model, output="model", **kw):
    from training import TrainConfig

    values = dict(data=[str(tmp_path / "raw")], output=str(tmp_path / output), model=model, weighting="none",
                  max_steps=1, batch_size=4, precision="fp32", learning_rate=1e-3, save_steps=100, max_seq_len=32,
                  group_column=None)
    return TrainConfig(**(values | kw))


def test_two_trainings_on_the_same_raw_shards_share_the_cache_instead_of_refusing(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """Raw shards are tokenised into $HARDFOCUS_CACHE/tokenized/<identity>, under that entry's output lock, which
    *refuses* a second holder: two `train raw/ -o A`, `train raw/ -o B` started together (a learning-rate sweep)
    fail, all but one, with 'another hardfocus run is writing to .../tokenized/...; choose another --output', an
    output the user never chose. A cache entry two runs may both need is waited for (as `waiting_lock` does for a
    converted model), not refused."""
    import threading

    from hardfocus.kinds import TOKENS
    from hardfocus.stagedir import StageDir
    from training import train

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    write_texts(tmp_path / "raw" / "a.jsonl", TEXTS)
    train(_raw_train_cfg(tmp_path, tiny_model_dir, "A"), progress=False)
    (entry,) = (tmp_path / "cache" / "tokenized").iterdir()
    other = StageDir(str(entry), TOKENS)
    other.lock()  # the other training of the sweep, checking (or writing) the entry right now
    timer = threading.Timer(2.0, other.unlock)
    timer.start()
    try:
        result = train(_raw_train_cfg(tmp_path, tiny_model_dir, "B"), progress=False)
    finally:
        timer.join()
    assert result.steps == 1


def test_a_damaged_tokenisation_cache_entry_is_tokenised_again(tmp_path, tiny_model_dir, monkeypatch):
    """A cache entry whose part was cut short (a full disk, a power cut, a cache copied half) is found COMPLETE by
    its marker and handed to training, which refuses it ('rerun the stage that wrote it with --overwrite'); but no
    stage the user can run writes the cache: `train --overwrite` finds the entry complete again. Every later run
    fails the same way until the user finds and deletes the entry by hand."""
    from training import train

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    write_texts(tmp_path / "raw" / "a.jsonl", TEXTS)
    train(_raw_train_cfg(tmp_path, tiny_model_dir), progress=False)
    (part,) = (tmp_path / "cache" / "tokenized").glob("*/part-*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    result = train(_raw_train_cfg(tmp_path, tiny_model_dir, overwrite=True, max_steps=2), progress=False)
    assert result.steps == 2


def test_raw_chat_shards_are_tokenised_again_after_their_chat_template_file_was_edited(tmp_path, tiny_chat_model_dir,
                                                                                     monkeypatch):
    """The tokenisation cache's key (training/raw_shards.py `as_token_dir`) holds `chat_template` as the *path* given, not
    the template: after the file is edited, `train raw/ --chat-template t.jinja` reuses the token ids rendered with the
    old template, and the training run's identity (which holds the same path) says the model is up to date."""
    from tests.conftest import CHATML, conversations, write_jsonl
    from training.raw_shards import as_token_dir

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    write_jsonl(tmp_path / "raw" / "c.jsonl", [{"messages": m} for m in conversations(6)])
    template = tmp_path / "chat.jinja"
    template.write_text(CHATML)
    cfg = _raw_train_cfg(tmp_path, tiny_chat_model_dir, format="messages", chat_template=str(template), max_seq_len=64)
    first = as_token_dir(str(tmp_path / "raw"), cfg, tiny_chat_model_dir, "train")
    template.write_text(CHATML.replace("You are a helpful assistant", "Reply in one short sentence, always politely"))
    second = as_token_dir(str(tmp_path / "raw"), cfg, tiny_chat_model_dir, "train")
    ids = [pq.read_table(Path(d) / "part-00000.parquet")["input_ids"].to_pylist() for d in (first, second)]
    assert ids[0] != ids[1], "token ids rendered with the old chat template were reused"


def test_train_refuses_an_output_inside_the_raw_shards_it_reads(tmp_path, tiny_model_dir, monkeypatch):
    """`train` checks its output against its inputs *after* raw shards were swapped for their cache entry
    (`refuse_overlap(cfg.output, [cache entry, model])`): `train corpus/ -o corpus/model` is accepted, and writes
    train_log.jsonl, config.json, tokenizer.json, train_job.json ... into the corpus, every one of them a shard
    (.jsonl/.json) of the next run, which is then 'other data' and refused, or with --overwrite trains on them."""
    from training import train

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    write_texts(tmp_path / "raw" / "a.jsonl", TEXTS)
    with pytest.raises(HardfocusError, match="raw"):
        train(_raw_train_cfg(tmp_path, tiny_model_dir, output="raw/model"), progress=False)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["a.jsonl"]


def _same_size_shards(root: Path) -> tuple[Path, Path]:
    """Two directories each holding ``train.jsonl``: the same size and modification stamp, other texts (what two
    releases of a dataset unpacked from archives, or ``rsync -t``/``cp -p`` of a regenerated file, give)."""
    a = write_jsonl(root / "a" / "train.jsonl", [{"text": f"The river flows down to sea {i:03d}"} for i in range(20)])
    b = write_jsonl(root / "b" / "train.jsonl", [{"text": f"A cat sat on the warm mats, {i:03d}"} for i in range(20)])
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    stamp = a.stat()
    os.utime(b, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    return a.parent, b.parent


def test_raw_shards_of_another_directory_are_not_trained_on_the_first_ones_tokens(tmp_path, tiny_model_dir):
    """training/raw_shards.py (as_token_dir): the cache entry of raw shards is keyed by each shard's path *relative
    to the directory given*, its size and its modification stamp, not by where it is or what it holds. A second
    directory whose shard has the same name, size and stamp (another release unpacked from an archive, a copy made
    with ``cp -p``/``rsync -t`` of a regenerated file) reuses the first one's tokens: ``train(data=[b])`` exits fine,
    trained on the rows of ``a``. Expected: another directory (or other bytes) is another cache entry."""
    from training import TrainConfig, train

    a, b = _same_size_shards(tmp_path)

    def erm(data: Path, out: str):
        cfg = TrainConfig(data=[str(data)], output=str(tmp_path / out), model=tiny_model_dir, weighting="none",
                          max_steps=1, batch_size=4, precision="fp32", save_steps=100)
        train(cfg, progress=False)
        (tokens,) = json.loads((tmp_path / out / "train_manifest.json").read_text())["data"]
        return tokens

    assert erm(a, "model-a") != erm(b, "model-b"), "b trained on the tokens cached for a"


def test_raw_eval_shards_are_not_the_training_shards_tokens(tmp_path, tiny_model_dir):
    """The same cache key (training/raw_shards.py as_token_dir; ``role`` is only logged): raw ``eval_data`` whose
    shard has the name, size and stamp of a raw training shard is evaluated on the *training* rows' tokens, so the
    run's eval loss is a training loss. Expected: the held-out rows are the ones evaluated."""
    from training import TrainConfig, train

    a, b = _same_size_shards(tmp_path)
    cfg = TrainConfig(data=[str(a)], eval_data=[str(b)], output=str(tmp_path / "model"), model=tiny_model_dir,
                      weighting="none", max_steps=1, batch_size=4, precision="fp32", save_steps=100, eval_steps=1)
    train(cfg, progress=False)
    from training.sources import find_sources

    manifest = json.loads((tmp_path / "model" / "train_manifest.json").read_text())
    (train_tokens,) = manifest["data"]
    assert manifest["eval_data"] != find_sources([train_tokens]).identity, (
        f"the held-out rows were evaluated on the training rows' tokens ({train_tokens})")
