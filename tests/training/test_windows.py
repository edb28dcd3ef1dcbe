"""Training on selected windows (``score --long-documents windows``): a window longer than ``max_seq_len`` is not
cut silently."""

from __future__ import annotations

from hardfocus.errors import HardfocusError
from scoring import score
from tests.conftest import write_jsonl
from tests.scoring.helpers import WINDOW_TOKENS, windowed_documents, windows_config
from tests.selection.helpers import select_without_report


def test_training_on_windows_longer_than_max_seq_len_is_not_silent(tmp_path, bos_model_dir, caplog):
    """Windows exist so that every token of a document is trained on; training cuts each sample at ``max_seq_len``
    (default 512, below scoring's default ``max_tokens`` 1024; demo.toml pairs 512 with 256), so with windows longer
    than that every window loses the tail of its own tokens: never trained on, no refusal and no warning, exit 0
    (the collator warns only about a sample left with no target at all). The README asks for
    ``max_seq_len >= max_tokens`` in prose; nothing checks it, though the selection's scores record max_tokens."""
    import logging

    from training import TrainConfig, train

    write_jsonl(tmp_path / "in" / "d.jsonl", windowed_documents(4))
    score(windows_config([tmp_path / "in"], tmp_path / "scores", bos_model_dir, window_context=2), progress=False)
    select_without_report([tmp_path / "scores"], tmp_path / "sel", drop_top=0.0, keep=1.0)
    cfg = TrainConfig(data=[str(tmp_path / "sel")], output=str(tmp_path / "model"), model=bos_model_dir,
                      max_steps=1, batch_size=4, max_seq_len=WINDOW_TOKENS // 2, precision="fp32", save_steps=100,
                      logging_steps=1, warmup_ratio=0.0, lr_scheduler="constant")
    caplog.set_level(logging.WARNING)
    try:
        train(cfg, progress=False)
    except HardfocusError as exc:
        assert "max_seq_len" in str(exc)
        return
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "max_seq_len" in r.getMessage()]
    assert warned, "every window was cut to max_seq_len, silently"
