"""Keep hardfocus's console readable while Ray runs: Ray's own lines go to log files unless logging at DEBUG.

Ray prints its INFO and WARNING lines (execution plans, "Full logs are in ...", the token-auth notice,
"Progress bars disabled ...") and its C++ core worker writes warnings straight to file descriptor 2
(e.g. ``core_worker.cc`` for every actor that Ray Data creates with its own constructor arguments in the
object store), all across hardfocus's progress bar. Errors still reach the console, as exceptions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)


def verbose() -> bool:
    return logging.getLogger("scoring").getEffectiveLevel() <= logging.DEBUG


def ray_log_level() -> int:
    """The level for ``ray.init(logging_level=...)``: Ray's console lines below ERROR only when verbose."""
    return logging.DEBUG if verbose() else logging.ERROR


def quiet_ray_data_console() -> None:
    """Ray Data's console handler shows ERROR and above; its file handler (``ray-data.log``) keeps the rest."""
    import ray.data  # noqa: F401  (importing it configures the ray.data logger's handlers)

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; the session-file handler is not a stream
            handler.setLevel(logging.INFO if verbose() else logging.ERROR)


def _stream_handlers(stream) -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return [h for lg in loggers for h in lg.handlers if isinstance(h, logging.StreamHandler) and h.stream is stream]


@contextlib.contextmanager
def native_stderr_to_file(prefix: str = "hardfocus-ray-") -> Iterator[str | None]:
    """While the block runs, what native code writes to fd 2 goes to a temp file, kept (and named in a warning)
    only if the block fails; Python's ``sys.stderr`` (the logs, the progress bar, tracebacks) keeps the console.
    Yields the file's path (None when verbose: then everything reaches the console)."""
    if verbose():
        yield None
        return
    try:
        sys.stderr.flush()
        console_fd = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (an embedding host): nothing to separate
        yield None
        return
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    old_stderr = sys.stderr
    console = os.fdopen(console_fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    handlers = _stream_handlers(old_stderr)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = console
    for handler in handlers:
        handler.setStream(console)
    failed = False
    try:
        yield path
    except BaseException:
        failed = True
        raise
    finally:
        console.flush()
        os.dup2(console_fd, 2)  # fd 2 is the console again; ``old_stderr`` writes to it
        sys.stderr = old_stderr
        for handler in handlers:
            handler.setStream(old_stderr)
        console.close()
        if failed and os.path.getsize(path):
            log.warning("Ray's native messages during the failed job are in %s", path)
        else:
            os.unlink(path)
