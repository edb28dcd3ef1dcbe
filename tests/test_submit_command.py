"""`hardfocus submit`'s rewriting of the command: config and chat template files travel in the working_dir.

The job runs with the working_dir as its current directory (the cluster test in test_submit.py runs a
job from a carried config), so a file is usable there when it sits at the name the command or the config uses.
"""

from __future__ import annotations

import pytest

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
