"""An S3-compatible server for the tests: moto's server mode in a subprocess, reached through the environment.

The ``s3_server`` fixture (session) starts ``moto_server`` on 127.0.0.1 and a free port, creates
the bucket :data:`BUCKET` and sets ``AWS_ENDPOINT_URL_S3`` (honoured by botocore, hence s3fs, and by
polars and pyarrow), fake credentials and a region in ``os.environ``: this process, its subprocesses
and the Ray workers it starts all reach the same server. ``s3_url`` gives each test its own prefix.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

BUCKET = "hardfocus-test"
_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
             "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The endpoint URL of a moto S3 server holding the bucket :data:`BUCKET`; the environment points at it."""
    pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")
    s3fs = pytest.importorskip("s3fs", reason="needs s3fs (the dev extra)")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-c", "import sys; from moto.server import main; sys.exit(main())", "-H", "127.0.0.1",
             "-p", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers
                break
            except OSError:
                assert server.poll() is None, f"moto_server exited: {log.read_text()[-2000:]}"
                assert time.time() < deadline, f"moto_server did not answer: {log.read_text()[-2000:]}"
                time.sleep(0.1)
        for k in _ENV_KEYS:
            os.environ.pop(k, None)
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL_S3=endpoint,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,  # nothing of the user's ~/.aws
        )
        s3fs.S3FileSystem.clear_instance_cache()  # an instance made before would not know the endpoint
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def s3_environment_before_ray(request) -> None:
    """Start the S3 server now (when moto and s3fs are installed) for a Ray about to start: a Ray node's workers
    inherit the environment of its start, and the s3 tests' workers must find the endpoint there."""
    import importlib.util

    if importlib.util.find_spec("moto") and importlib.util.find_spec("s3fs"):
        request.getfixturevalue("s3_server")


@pytest.fixture
def s3_url(s3_server, request) -> str:
    """``s3://<bucket>/<test name>-<random>``: a prefix of this test's own."""
    return f"s3://{BUCKET}/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def s3_fs():
    """The s3fs filesystem with no cached listings: other processes write to the bucket."""
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs


def upload(local: str | Path, url: str) -> str:
    """Copy a local directory's files to ``url``/...; returns ``url``."""
    fs = s3_fs()
    root = Path(local)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{url}/{p.relative_to(root).as_posix()}")
    return url


def download(url: str, local: str | Path) -> Path:
    """Copy every object under ``url`` into the local directory ``local``; returns it."""
    fs = s3_fs()
    prefix = url.removeprefix("s3://").rstrip("/")
    local = Path(local)
    for key in fs.find(prefix):
        target = local / key[len(prefix) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
    return local


def names(url: str) -> list[str]:
    """Object names under ``url``, relative to it, as the store lists them now."""
    prefix = url.removeprefix("s3://").rstrip("/")
    return sorted(k[len(prefix) + 1 :] for k in s3_fs().find(prefix))
