"""`hardfocus submit`'s rewriting of the command: config and chat template files travel in the working_dir.

The job runs with the working_dir as its current directory (the cluster test in test_submit.py runs a
job from a carried config), so a file is usable there when it sits at the name the command or the config uses. A cluster that refuses
the client for want of a token gets the one-line hint, not Ray's traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.exceptions import AuthenticationError

from pipelines.submit import job_command
from scoring import HardfocusError
from tests.conftest import CHATML


@pytest.fixture
def here(tmp_path, monkeypatch):
    """The current directory the user submits from, with a template file below it."""
    cwd = tmp_path / "project"
    (cwd / "templates").mkdir(parents=True)
    (cwd / "templates" / "chatml.jinja").write_text(CHATML)
    monkeypatch.chdir(cwd)
    return cwd


def test_chat_template_flag_file_travels_and_the_flag_names_the_copy(here, tmp_path):
    workdir = tmp_path / "job"
    workdir.mkdir()
    for flag in (["--chat-template", "templates/chatml.jinja"], ["--chat-template=templates/chatml.jinja"]):
        cmd = job_command(["score", "s3://b/in", "-o", "s3://b/out", "--format", "messages", *flag], workdir)
        value = cmd[-1] if len(flag) == 2 else cmd[-1].split("=", 1)[1]
        assert value != "templates/chatml.jinja" and "/" not in value
        assert (workdir / value).read_text() == CHATML


def test_inline_template_flag_is_left_as_it_is(here, tmp_path):
    cmd = job_command(["score", "in", "--chat-template", CHATML], tmp_path)
    assert cmd[-1] == CHATML
    assert list(tmp_path.iterdir()) == [here]  # nothing copied beside the project folder


def test_relative_template_in_a_config_is_copied_to_the_same_relative_path(here, tmp_path):
    workdir = tmp_path / "job"
    workdir.mkdir()
    (here / "run.toml").write_text(
        '[run]\nformat = "messages"\nchat_template = "templates/chatml.jinja"\n'
        f'[score]\nchat_template = """{CHATML}"""\n'
    )
    cmd = job_command(["run", "run.toml"], workdir)
    assert (workdir / cmd[1]).read_text() == (here / "run.toml").read_text()  # the config itself, unchanged
    assert (workdir / "templates" / "chatml.jinja").read_text() == CHATML


def test_template_paths_that_cannot_travel_are_refused_by_name(here, tmp_path):
    (here / "missing.toml").write_text('[score]\nchat_template = "templates/nope.jinja"\n')
    with pytest.raises(HardfocusError, match="'templates/nope.jinja' does not exist"):
        job_command(["score", "in", "-c", "missing.toml"], tmp_path)
    (here / "up.toml").write_text('[train]\nchat_template = "../chatml.jinja"\n')
    with pytest.raises(HardfocusError, match="leaves the current directory"):
        job_command(["train", "in", "--config=up.toml"], tmp_path)
    with pytest.raises(HardfocusError, match="chat template file 'gone.jinja' does not exist"):
        job_command(["score", "in", "--chat-template", "gone.jinja"], tmp_path)
    absolute = str(here / "templates" / "chatml.jinja")  # cluster storage: left for the cluster to resolve
    (here / "abs.toml").write_text(f'[score]\nchat_template = "{absolute}"\n')
    assert job_command(["score", "in", "-c", "abs.toml"], tmp_path)[-1].startswith("config-")


class _RefusingClient:
    """A JobSubmissionClient whose cluster wants a token: Ray's own exception, raised where Ray raises it."""

    def __init__(self, address, refuse_in="__init__"):
        self.refuse_in = refuse_in
        if refuse_in == "__init__":  # the version check of the constructor
            raise AuthenticationError("Authentication required: Unauthorized: missing token\n\nRay's many lines of help")

    def submit_job(self, **job):
        raise AuthenticationError("Authentication failed: Forbidden: invalid token\n\nRay's many lines of help")


@pytest.mark.parametrize("refuse_in, said", [
    ("__init__", "Authentication required: Unauthorized: missing token"),
    ("submit_job", "Authentication failed: Forbidden: invalid token"),
])
def test_a_cluster_that_wants_a_token_gets_one_line_and_exit_2(here, monkeypatch, refuse_in, said):
    import ray.job_submission
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", lambda address: _RefusingClient(address, refuse_in))
    result = CliRunner().invoke(app, ["submit", "--address", "http://127.0.0.1:8265", "score", "s3://b/in", "-o", "s3://b/o"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert said in lines[0] and "set RAY_AUTH_MODE=token" in lines[0] and "http://127.0.0.1:8265" in lines[0]


def test_submit_ships_a_chat_template_file_given_with_set(tmp_path, monkeypatch):
    """pipelines/submit.py (job_command): ``hardfocus submit ... run cfg.toml --set run.chat_template=FILE`` ships
    the config and the config's own template files, but reads the config without the ``--set`` overrides the job
    will apply (load_config(path) with none), so a template file named by ``--set`` stays behind and the job fails
    on the cluster with "chat template file ... does not exist". Expected: the template ``--set`` names travels in
    the working_dir as one named in the config does."""
    from pipelines.submit import job_command

    monkeypatch.chdir(tmp_path)
    Path("tpl").mkdir()
    Path("tpl/chat.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    Path("run.toml").write_text('[run]\nworkdir = "/shared/w"\ndata = ["/shared/d"]\nformat = "messages"\n')
    for spelling in (["--set", "run.chat_template=tpl/chat.jinja"], ["--set=run.chat_template=tpl/chat.jinja"]):
        workdir = tmp_path / f"job{len(spelling)}"
        workdir.mkdir()
        job_command(["run", "run.toml", *spelling], workdir)
        assert (workdir / "tpl" / "chat.jinja").is_file(), sorted(p.name for p in workdir.rglob("*"))
