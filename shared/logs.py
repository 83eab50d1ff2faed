"""Logging for every command and server: one `configure(level, log_format)` at the edge (text
for people, `json` for machines: one object per line), and the id of the job or request a line
is about, carried in a context variable and added to every record (`job_id`, `request_id`).

    with job_context(job.id):      # the worker, around one job
        log.info("started")        # ... "job_id": "6f1c..." in JSON, [job 6f1c...] in text
"""

import contextlib
import contextvars
import json
import logging
from datetime import datetime, timezone
from typing import Iterable, Iterator

FORMATS = ("text", "json")
SECRET_FLAGS = ("--auth_token", "--api_key", "--database_url")  # values never logged (a URL may hold a password)
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(ids)s%(message)s"
CONTEXT_FIELDS = ("job_id", "request_id")
_ids = {name: contextvars.ContextVar(name, default=None) for name in CONTEXT_FIELDS}


@contextlib.contextmanager
def _context(name: str, value: str | None) -> Iterator[None]:
    token = _ids[name].set(value)
    try:
        yield
    finally:
        _ids[name].reset(token)


def job_context(job_id: str) -> contextlib.AbstractContextManager:
    return _context("job_id", job_id)


def set_request_id(request_id: str | None) -> None:
    """For the rest of this task (a gRPC call's handler), lines carry the request's id."""
    _ids["request_id"].set(request_id or None)


class ContextIds(logging.Filter):
    """Adds job_id and request_id (None when unset) and `ids`, their text form, to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in CONTEXT_FIELDS:
            setattr(record, name, getattr(record, name, None) or _ids[name].get())
        shown = [f"{name.removesuffix('_id')} {getattr(record, name)}" for name in CONTEXT_FIELDS
                 if getattr(record, name)]
        record.ids = f"[{', '.join(shown)}] " if shown else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update({name: getattr(record, name) for name in CONTEXT_FIELDS if getattr(record, name, None)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(level: str | int = "warning", log_format: str = "text") -> None:
    """The root logger's one handler (stderr), in `log_format`; replaces any earlier one."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextIds())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


def at_least_info(logger: str = "dbrx_serve") -> None:
    """A server's own lines (load times, jobs started and ended) are worth showing."""
    package = logging.getLogger(logger)
    package.setLevel(min(package.getEffectiveLevel(), logging.INFO))


def redacted(argv: Iterable[str]) -> list[str]:
    """A command line as a log may show it: the values of SECRET_FLAGS (given as `--flag VALUE`
    or `--flag=VALUE`) replaced by ***."""
    shown, hide_next = [], False
    for arg in map(str, argv):
        flag = arg.split("=", 1)[0]
        shown.append("***" if hide_next else f"{flag}=***" if flag in SECRET_FLAGS and "=" in arg else arg)
        hide_next = not hide_next and arg in SECRET_FLAGS
    return shown
