"""``hardfocus submit``: run a stage (or ``run``) as a Ray job through the Job Submission SDK.

The config files named on the command line travel in the job's ``working_dir`` (the command is
rewritten to use the copies), and so do chat template files (``--chat-template FILE``, or a relative
``chat_template`` path in a config, which the job resolves against the working_dir as it would here against
the current directory); the hardfocus packages travel as ``py_modules``, so the cluster needs only the
dependencies installed. Other paths inside configs and flags must make sense on the cluster: absolute
paths on storage every node sees, or URLs (``s3://``). The job's log is streamed here and its exit status
returned.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hardfocus.chat import is_inline_template
from hardfocus.errors import HardfocusError
from pipelines.config import load_config
from pipelines.packages import HARDFOCUS_PACKAGES

log = logging.getLogger(__name__)

_CONFIG_FLAGS = ("-c", "--config")
_TEMPLATE_FLAG = "--chat-template"
_AGENT_WAIT_S = 180.0


def job_command(args: list[str], workdir: Path) -> list[str]:
    """``args`` with every config file and chat template file copied into ``workdir``.

    Files named by flags are replaced by their names there. A config's relative ``chat_template`` paths are
    copied to the same relative path, so the unchanged config finds them from the job's working_dir.
    """
    out, copies = list(args), 0

    def carry(path: str, kind: str) -> str:
        nonlocal copies
        source = Path(path)
        if not source.is_file():
            raise HardfocusError(f"{kind} file '{path}' does not exist")
        copies += 1
        name = f"{kind.replace(' ', '-')}-{copies}-{source.name}"
        shutil.copy(source, workdir / name)
        return name

    def carry_config(path: str) -> str:
        name = carry(path, "config")
        sets = _set_items(args) if args and args[0] == "run" else []  # the job applies them: templates they name too
        for value in _chat_template_settings(load_config(path, overrides=sets).model_dump()):
            _carry_relative_template(value, path, workdir)
        return name

    def carry_template(value: str) -> str:
        return value if is_inline_template(value) else carry(value, "chat template")

    carriers = {flag: carry_config for flag in _CONFIG_FLAGS} | {_TEMPLATE_FLAG: carry_template}
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if i > 0 and out[i - 1] in carriers:  # `--flag FILE`
            out[i] = carriers[out[i - 1]](arg)
        elif eq and flag.startswith("--") and flag in carriers:  # `--flag=FILE`
            out[i] = f"{flag}={carriers[flag](value)}"
    if out and out[0] == "run" and len(out) > 1 and not out[1].startswith("-"):
        out[1] = carry_config(out[1])
    return out


def _set_items(args: list[str]) -> list[str]:
    """The ``--set TABLE.KEY=VALUE`` items of ``hardfocus run``'s arguments (``--set ITEM`` and ``--set=ITEM``)."""
    items = []
    for i, arg in enumerate(args):
        if arg == "--set" and i + 1 < len(args):
            items.append(args[i + 1])
        elif arg.startswith("--set="):
            items.append(arg.removeprefix("--set="))
    return items


def _chat_template_settings(tables: dict) -> list[str]:
    """Every ``chat_template`` value of a config's stage tables that names a file rather than holding a template."""
    return [
        table["chat_template"] for table in tables.values()
        if isinstance(table, dict) and isinstance(table.get("chat_template"), str)
        and not is_inline_template(table["chat_template"])
    ]


def _carry_relative_template(value: str, config: str, workdir: Path) -> None:
    """Copy a config's relative template path to the same place under ``workdir`` (absolute paths stay as they are:
    they must name storage the cluster sees, like every other absolute path in a config)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return
    if ".." in path.parts:
        raise HardfocusError(
            f"config file '{config}': chat_template '{value}' leaves the current directory, so it cannot travel with "
            "the job; give a path below the current directory, an absolute path the cluster sees, or the template inline"
        )
    if not path.is_file():
        raise HardfocusError(f"config file '{config}': chat template file '{value}' does not exist")
    (workdir / path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, workdir / path)


def submit(address: str, args: list[str], wait: bool = True, echo: Callable[[str], None] = print) -> int:
    """Submit ``hardfocus <args>`` to the cluster at ``address`` (its dashboard); returns the job's exit status."""
    from ray.exceptions import AuthenticationError

    if not args:
        raise HardfocusError("nothing to submit: give a stage and its arguments, e.g. `submit --address URL run demo.toml`")
    try:
        return _submit(address, args, wait, echo)
    except AuthenticationError as exc:  # any request of the SDK may raise it; Ray's own text is a screenful
        raise HardfocusError(auth_hint(address, exc.message)) from None


def auth_hint(address: str, message: str) -> str:
    """One line for a cluster that refused us: what it said (its first line) and the setting that sends the token."""
    said = message.strip().splitlines()[0] if message.strip() else "authentication failed"
    return (
        f"the Ray cluster at {address} refused the request ({said}); it uses token authentication: set "
        "RAY_AUTH_MODE=token and provide the cluster's token (~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN)"
    )


def _submit(address: str, args: list[str], wait: bool, echo: Callable[[str], None]) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise HardfocusError(
            f"cannot reach the Ray dashboard at {address} ({exc}); is the cluster up and the dashboard enabled? "
            "With token authentication, set RAY_AUTH_MODE=token and provide the token"
        ) from None
    with tempfile.TemporaryDirectory(prefix="hardfocus-job-") as workdir:
        command = job_command(args, Path(workdir))
        entrypoint = "python -m pipelines.cli " + shlex.join(command)
        job_id = _submit_job(
            client,
            entrypoint=entrypoint,
            runtime_env={"working_dir": workdir, "py_modules": HARDFOCUS_PACKAGES},
            metadata={"hardfocus": shlex.join(args)},
        )
    echo(f"submitted {job_id}: {entrypoint}")
    if not wait:
        return 0
    asyncio.run(_stream_logs(client, job_id, echo))
    status = client.get_job_status(job_id)
    info = client.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    echo(f"job {job_id}: {status.value}" + (f" (exit {code})" if code is not None else ""))
    if code is not None:
        return int(code)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _submit_job(client, **job) -> str:
    """``client.submit_job``, waiting while the cluster's job agents start (a cluster that has just come up,
    or a loaded one, answers "No available agent to submit job, please try again later")."""
    deadline = time.monotonic() + _AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            log.info("the cluster has no job agent up yet; trying again")
            time.sleep(2.0)


async def _stream_logs(client, job_id: str, echo: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        echo(chunk.rstrip("\n"))
