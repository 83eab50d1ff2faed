"""What every stage's options share: built from a job's spec (a dict) or from a
request whose paths a worker elsewhere must be able to open."""

import os
from dataclasses import dataclass, fields
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


@dataclass(frozen=True)
class PathPolicy:
    """Which paths a remote request may name: absolute ones (they are the worker's
    paths; a relative one would depend on its directory), and with `allowed_roots`
    only those under one of them, after resolving `..` and symbolic links. No
    roots: any absolute path. The server checks a request when it comes
    (`dbrx serve STAGE --allowed_root DIR`), a worker again on its own file
    system when it runs the job (`dbrx worker STAGE --allowed_root DIR`).

    It confines what requests name, not what is on disk: whoever can write under
    a root (symbolic links, a checkpoint's manifest naming its model dir) is trusted."""
    allowed_roots: tuple[str, ...] = ()

    def __post_init__(self):
        for root in self.allowed_roots:
            if not PurePath(root).is_absolute():
                raise InvalidInput(f"--allowed_root {root!r} must be an absolute path")

    def check(self, request, names: tuple[str, ...], stage: str) -> None:
        for name in names:
            value = getattr(request, name)
            if not value:
                continue
            if not isinstance(value, str):
                raise InvalidInput(f"{name} must be a path, got {value!r}")
            if "\0" in value:
                raise InvalidInput(f"{name} {value!r} contains a NUL character")
            if not PurePath(value).is_absolute():
                raise InvalidInput(f"{name} {value!r} must be an absolute path (as the {stage} worker sees it)")
            if self.allowed_roots and not self.allows(value):
                raise InvalidInput(f"{name} {value!r} is outside the directories the {stage} service accepts "
                                   f"(--allowed_root {' '.join(self.allowed_roots)})")

    def allows(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(os.path.commonpath([real, root]) == root
                   for root in map(os.path.realpath, self.allowed_roots))


ANY_ABSOLUTE_PATH = PathPolicy()
