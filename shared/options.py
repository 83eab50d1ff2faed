"""What every stage's options share: built from a job's spec (a dict) or from a
request whose paths a worker elsewhere must be able to open."""

from dataclasses import fields
from pathlib import PurePath
from typing import Any

from .errors import InvalidInput


def options_from_dict(cls, values: dict[str, Any], what: str):
    """`cls(**values)`, refusing names `cls` does not know (a spec from a newer or older client)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInput(f"unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


def require_absolute_paths(request, names: tuple[str, ...], stage: str) -> None:
    """Paths in a request are the worker's paths: relative ones would depend on its directory."""
    for name in names:
        value = getattr(request, name)
        if value and not PurePath(value).is_absolute():
            raise InvalidInput(f"{name} {value!r} must be an absolute path (as the {stage} worker sees it)")
