"""``hardfocus submit``: run a stage (or ``run``) as a Ray job through the Job Submission SDK.

The config files named on the command line travel in the job's ``working_dir`` (the command is
rewritten to use the copies); the hardfocus packages travel as ``py_modules``, so the cluster needs
only the dependencies installed. Paths inside configs and flags must make sense on the cluster:
absolute paths on storage every node sees, or URLs (``s3://``). The job's log is streamed here and
its exit status returned.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipelines.train import HARDFOCUS_PACKAGES
from scoring.errors import HardfocusError

log = logging.getLogger(__name__)

_CONFIG_FLAGS = ("-c", "--config")


def job_command(args: list[str], workdir: Path) -> list[str]:
    """``args`` with every config file copied into ``workdir`` and replaced by its name there."""
    out, copies = list(args), 0

    def carry(path: str) -> str:
        nonlocal copies
        source = Path(path)
        if not source.is_file():
            raise HardfocusError(f"config file '{path}' does not exist")
        copies += 1
        name = f"config-{copies}-{source.name}"
        shutil.copy(source, workdir / name)
        return name

    for i, arg in enumerate(out):
        if i > 0 and out[i - 1] in _CONFIG_FLAGS:
            out[i] = carry(arg)
        elif arg.startswith("--config="):
            out[i] = "--config=" + carry(arg.split("=", 1)[1])
    if out and out[0] == "run" and len(out) > 1 and not out[1].startswith("-"):
        out[1] = carry(out[1])
    return out


def submit(address: str, args: list[str], wait: bool = True, echo: Callable[[str], None] = print) -> int:
    """Submit ``hardfocus <args>`` to the cluster at ``address`` (its dashboard); returns the job's exit status."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if not args:
        raise HardfocusError("nothing to submit: give a stage and its arguments, e.g. `submit --address URL run demo.toml`")
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
        job_id = client.submit_job(
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


async def _stream_logs(client, job_id: str, echo: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        echo(chunk.rstrip("\n"))
