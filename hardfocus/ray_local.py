"""Start or join the Ray that a stage runs on: a cluster (``RAY_ADDRESS`` / ``address``), or a local Ray that only
this machine can reach.

A local Ray serves no one else, so it is bound to loopback: on Linux Ray 2.60 takes the node's address to be its
outward-facing IP (``ray.init(_node_ip_address="127.0.0.1")`` is resolved to that IP too) and its servers listen
on all interfaces. Ray's own local-only mode, the default on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``,
read once when Ray is imported), makes the node's address 127.0.0.1; the GCS, raylet (node and object manager),
dashboard and runtime-env agents, the autoscaler monitor, the driver and every worker then listen on 127.0.0.1.

Ray enables token authentication for a new local Ray and writes a new token to ``~/.ray/auth_token`` with the
default umask (world-readable); here it is written under umask 077 (umask only around that write: Ray's daemons
and workers inherit the umask of ``ray.init``, and they write the stages' outputs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from hardfocus.console import ray_log_level
from hardfocus.errors import HardfocusError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Ray starts its workers at niceness 15, below its own daemons and the driver: on a small machine every wake-up of
# theirs then preempts a thread of the scoring actor's matmuls, which wait for it. Metrics: no exporter to serve.
_LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0, "enable_metrics_collection": False}
_FOUNDATION_DIR = os.path.dirname(os.path.abspath(__file__))  # this package, which every stage's workers import


def starts_local_ray(address: str | None) -> bool:
    """Whether :func:`init_ray` with this ``address`` starts a local Ray of its own rather than joining a cluster
    (neither ``address`` nor ``$RAY_ADDRESS``, or Ray's own word for a new local Ray, ``local``)."""
    address = address or os.environ.get("RAY_ADDRESS")
    return not address or address == "local"


def init_ray(address: str | None, packages: list[str] | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local Ray; True if this call started or joined it.

    On a cluster, the foundation and ``packages`` (the directories of the stage packages its workers import) are
    shipped to the workers.
    A local Ray listens on 127.0.0.1 only; its token file (``~/.ray/auth_token``) is readable by its owner only.
    """
    import ray

    if ray.is_initialized():
        return False
    level = ray_log_level()
    if not starts_local_ray(address):
        address = address or os.environ["RAY_ADDRESS"]
        # Ship this package to the cluster's workers, so nodes need only the dependencies installed;
        # a Ray job's driver (submitted with its runtime env, which Ray announces in this variable) has them already.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        runtime_env = None if in_job else {"py_modules": [_FOUNDATION_DIR, *(packages or [])]}
        try:
            ray.init(address=address, logging_level=level, runtime_env=runtime_env)
        except ConnectionError as exc:
            raise HardfocusError(
                f"cannot connect to the Ray cluster at {address} ({exc.__cause__ or exc}); is it running? "
                "If it uses token authentication, set RAY_AUTH_MODE=token and provide the token "
                "(~/.ray/auth_token or RAY_AUTH_TOKEN)"
            ) from None
        log.info("connected to the Ray cluster at %s", address)
    else:
        _start_local(level)
        log.info("started a local Ray on %s (set RAY_ADDRESS or --ray-address to use a cluster)", LOOPBACK)
    return True


def _start_local(level: int) -> None:
    import ray

    _private_token(level)
    with _loopback_node():
        # "local": a new Ray of our own, never one that `ray start` left running on this machine
        try:
            ray.init(address="local", _node_ip_address=LOOPBACK, logging_level=level, include_dashboard=False,
                     _system_config=dict(_LOCAL_SYSTEM_CONFIG))
        except Exception as exc:  # Ray raises a bare Exception when its node's processes start too slowly
            if "timed out during startup" not in str(exc):
                raise
            raise HardfocusError(
                "the local Ray did not start in time (its node's processes timed out during start-up): the machine "
                "is overloaded; run the same command again when it is quieter (what was written is kept)"
            ) from None
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:  # a Ray that no longer honours its local-only mode: do not run reachable from outside
        ray.shutdown()
        raise HardfocusError(
            f"the local Ray started on {node_ip}, not {LOOPBACK} (Ray {ray.__version__}); use a Ray version "
            "hardfocus supports, or a cluster (RAY_ADDRESS)"
        )
    _tighten_token_file()


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Ray's local-only mode for the ``ray.init`` inside: the node's address is 127.0.0.1, so every server of
    the node binds to it; the processes started meanwhile inherit the mode through the environment."""
    from ray._private import ray_constants

    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def _private_token(level: int) -> None:
    """Let Ray set up token authentication as ``ray.init`` is about to (on unless ``RAY_AUTH_MODE`` says otherwise;
    a new token when none is found), under umask 077: a token it writes is 0600 in a 0700 ``~/.ray``. Its notices
    at ``level``, as ``ray.init(logging_level=level)`` would show them."""
    from ray._private.authentication import authentication_token_setup as auth

    saved_level, old_umask = auth.logger.level, os.umask(0o077)
    auth.logger.setLevel(level)
    try:
        auth.enable_token_auth_by_default()
        auth.ensure_token_if_auth_enabled(dict(_LOCAL_SYSTEM_CONFIG), create_token_if_missing=True)
    finally:
        os.umask(old_umask)
        auth.logger.setLevel(saved_level)


def _tighten_token_file() -> None:
    """The default token file (the one Ray writes) and its directory, if they are ours: no access for others
    (a token written before, by an older hardfocus or Ray, was world-readable)."""
    token = Path.home() / ".ray" / "auth_token"
    for path, is_kind, keep in ((token, stat.S_ISREG, 0o600), (token.parent, stat.S_ISDIR, 0o7755)):
        try:
            st = path.lstat()  # not through a link
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == os.getuid() and is_kind(st.st_mode) and mode & ~keep:
            os.chmod(path, mode & keep)
            log.info("made %s private (mode %o, was %o)", path, mode & keep, mode)
