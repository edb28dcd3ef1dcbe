"""``hardfocus eval``: each model's held-out scores kept or rescored by their own identity (a model added, a chat
template edited, the models reordered), read from its own directory, model specs that are paths, windows counted as
documents."""

from __future__ import annotations

import polars as pl
from transformers import AutoTokenizer

from tests.conftest import write_jsonl
from tests.scoring.helpers import TEXTS, WINDOW_TOKENS, one_token_tails, write_texts


def test_adding_a_model_to_an_evaluation_does_not_rescore_the_models_already_scored(tmp_path, tiny_model_dir,
                                                                                  tiny_chat_model_dir):
    """pipelines/evaluation/job.py says "any change rescores what changed (each scores-<name>/ resumes or is replaced by
    its own identity)", but `open(identity, overwrite=True)` answers REPLACE to any change and `clear()` deletes
    every scores-<name>/ first: adding a model (or retraining one) rescores the baseline's held-out set too."""
    from pipelines.evaluation import EvalConfig, evaluate

    write_texts(tmp_path / "held" / "h.jsonl", TEXTS)
    cfg = EvalConfig(models=[f"base={tiny_model_dir}"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=32, dtype="float32")
    evaluate(cfg, progress=False)
    base = tmp_path / "eval" / "scores-base"

    def stamps():
        return {p.name: p.stat().st_mtime_ns for p in sorted(base.iterdir()) if p.is_file()}

    before = stamps()
    assert "manifest.json" in before
    evaluate(cfg.model_copy(update={"models": [f"base={tiny_model_dir}", f"chat={tiny_chat_model_dir}"]}),
             progress=False)
    assert stamps() == before, "the baseline's held-out scores were deleted and scored again"


def test_eval_under_a_directory_with_brackets_reads_its_own_scores_not_a_lookalike(tmp_path, tiny_model_dir,
                                                                                   tiny_chat_model_dir):
    """pipelines/evaluation/tables.py group_perplexity hands the part URLs to `pl.scan_parquet`, which takes every path as a
    glob: the parts of `run[1]/eval/scores-base/` are read from `run1/eval/scores-base/` when that exists (another
    experiment over the same held-out shards has parts of the same names). eval.json then reports the other
    model's perplexity. (Also: scoring/manifest.py count_duplicate_ids, selection/scores.py _check_unique_ids,
    pipelines/labels.py, selection/job.py build_report.)"""
    from pipelines.evaluation import EvalConfig, evaluate

    write_texts(tmp_path / "held" / "h.jsonl", TEXTS)

    def run(model, output):
        cfg = EvalConfig(models=[f"base={model}"], data=[str(tmp_path / "held")], output=str(output),
                         group_column=None, max_tokens=32, dtype="float32")
        return evaluate(cfg, progress=False).models[0].table["loss"].to_list()

    other = run(tiny_chat_model_dir, tmp_path / "run1" / "eval")  # another experiment, another model
    want = run(tiny_model_dir, tmp_path / "clean" / "eval")
    assert other != want
    got = run(tiny_model_dir, tmp_path / "run[1]" / "eval")
    assert got == want, "eval.json of run[1]/ holds the perplexity computed from run1/'s scores"


def test_an_eval_model_path_with_an_equals_sign_is_a_path(tmp_path, monkeypatch):
    """`--model sweep/lr=0.1/model` (sweep directories are named so) is split into the name 'sweep/lr' and the spec
    '0.1/model', which is then looked up on the Hugging Face hub; the scores go to 'scores-sweep/lr'."""
    from pipelines.evaluation.config import EvalConfig

    (tmp_path / "sweep" / "lr=0.1" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig(models=["sweep/lr=0.1/model"], data=["held"], output="eval")
    assert cfg.named_models() == [("model", "sweep/lr=0.1/model")]


def test_eval_after_its_chat_template_file_was_edited_is_not_up_to_date(tmp_path, tiny_chat_model_dir):
    """Eval's identity records the settings as given: `chat_template` is the *path* of the template file, and the
    models' fingerprints cover config and weights, not the tokenizer (nor the template it carries). Edit the template
    (or the model's tokenizer_config.json) and rerun: 'already holds this evaluation', the perplexities of the old
    rendering, exit 0. (The scoring stage itself would notice: its identity has the template's sha256.)"""
    from pipelines.evaluation import EvalConfig, evaluate
    from tests.conftest import CHATML, conversations, write_jsonl

    write_jsonl(tmp_path / "held" / "h.jsonl", [{"messages": m} for m in conversations(6)])
    template = tmp_path / "chat.jinja"
    template.write_text(CHATML)
    cfg = EvalConfig(models=[f"base={tiny_chat_model_dir}"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=200, dtype="float32", format="messages", chat_template=str(template))
    first = evaluate(cfg, progress=False).models[0].table["loss"].to_list()
    template.write_text(CHATML.replace("You are a helpful assistant", "Reply in one short sentence, always politely"))
    again = evaluate(cfg, progress=False)
    assert not again.skipped, "eval.json of the old template was kept"
    assert again.models[0].table["loss"].to_list() != first


def test_eval_with_its_models_in_another_order_compares_against_the_new_first_model(tmp_path, tiny_model_dir,
                                                                                    tiny_chat_model_dir):
    """The first model is the baseline ("the change against the first"); eval's identity holds the models as a dict
    {name: fingerprint}, which compares equal in any order, so `-m trained=M -m base=B` after `-m base=B -m
    trained=M` is 'already done' and returns the old order: the table compares against the old baseline."""
    from pipelines.evaluation import EvalConfig, evaluate

    write_texts(tmp_path / "held" / "h.jsonl", TEXTS)

    def run(models):
        cfg = EvalConfig(models=models, data=[str(tmp_path / "held")], output=str(tmp_path / "eval"), group_column=None,
                         max_tokens=32, dtype="float32")
        return [m.name for m in evaluate(cfg, progress=False).models]

    assert run([f"a={tiny_model_dir}", f"b={tiny_chat_model_dir}"]) == ["a", "b"]
    assert run([f"b={tiny_chat_model_dir}", f"a={tiny_model_dir}"]) == ["b", "a"]


def test_eval_in_windows_does_not_count_scored_documents_as_rows_it_could_not_score(tmp_path, tiny_model_dir):
    """Eval in windows counts a document once (``docs``), but ``rows_not_ok`` ("held-out rows a model cannot score
    (empty, too short)", README) counts windows: every document whose last window holds one token (no BOS, context
    0: a documented unscored position, not a failure) adds one, so eval reports as many held-out rows it could not
    score as there are documents, although it scored every one of them; and two models with other tokenizers
    report different counts for the same held-out set."""
    from pipelines.evaluation import EvalConfig, evaluate

    docs = one_token_tails(AutoTokenizer.from_pretrained(tiny_model_dir))
    write_jsonl(tmp_path / "held" / "h.jsonl", [{"text": d["text"]} for d in docs])
    cfg = EvalConfig(models=[f"base={tiny_model_dir}"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=WINDOW_TOKENS, dtype="float32", long_documents="windows")
    model = evaluate(cfg, progress=False).models[0]
    assert model.table.filter(pl.col("group") == "(all)")["docs"].item() == len(docs)
    assert model.not_ok == 0, f"{model.not_ok} held-out rows not ok, of {len(docs)} documents all scored"


def test_eval_reads_each_models_tokenizer_from_its_resolved_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    """A model given by alias (`smollm2-135m`, a GGUF file) is no directory: its identity's tokenizer is read from the
    checkpoint the alias resolves to, never looked up under the alias (that went to the hub, and failed offline)."""
    import pipelines.evaluation.job as evaluate_module
    import scoring.job as job_module
    import scoring.units as units_module
    from hardfocus.models import resolve_model
    from pipelines.evaluation.config import EvalConfig
    from tests.conftest import write_jsonl

    def aliased(spec: str):
        return resolve_model(tiny_model_dir if spec == "tiny-alias" else spec)

    monkeypatch.setattr(evaluate_module, "resolve_model", aliased)
    monkeypatch.setattr(job_module, "resolve_model", aliased)
    monkeypatch.setattr(units_module, "resolve_model", aliased)
    units_module._checkpoint_path.cache_clear()
    write_jsonl(tmp_path / "held" / "h.jsonl", [{"text": t} for t in ("The river flows to the sea.",
                                                                       "A committee met on Tuesday.")])
    cfg = EvalConfig(models=["base=tiny-alias"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=32, dtype="float32")
    result = evaluate_module.evaluate(cfg, progress=False)
    assert result.models[0].table.filter(pl.col("group") == "(all)")["docs"].item() == 2
    assert evaluate_module.evaluate(cfg, progress=False).skipped
