"""What every stage's options share: built from a job's spec (a dict) or from a
request whose paths a worker elsewhere must be able to open."""

import os
from dataclasses import dataclass, fields
from pathlib import PurePath
from typing import Any

from .artifacts import NAME_MAX, check_apart, check_output_name, contains
from .errors import InvalidInput, shown

MAX_PATH_BYTES = 4095  # Linux's PATH_MAX (4096) less the final NUL
OUTPUT = "output_dir"  # the one path a stage writes; every other path it names is an input


def options_from_dict(cls, values: dict[str, Any], what: str):
    """`cls(**values)`, refusing names `cls` does not know (a spec from a newer or older client)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInput(f"unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


@dataclass(frozen=True)
class PathPolicy:
    """Which paths a remote request may name: within the size bounds of a Linux path
    (checked first, before anything resolves a path), absolute ones (they are the worker's
    paths; a relative one would depend on its directory), and with `allowed_roots` only
    those under one of them, after resolving `..` and symbolic links. No roots: any
    absolute path. The output (`output_dir`) must also stay apart from every input (the
    other names), compared resolved (shared/artifacts.py `check_apart`). The server checks
    a request when it comes (`dbrx serve STAGE --allowed_root DIR`), a worker again on its
    own file system when it runs the job (`dbrx worker STAGE --allowed_root DIR`).

    It confines what requests name, not what is on disk: whoever can write under a root
    (symbolic links, a checkpoint's manifest naming its model dir) is trusted."""
    allowed_roots: tuple[str, ...] = ()

    def __post_init__(self):
        for root in self.allowed_roots:
            if not PurePath(root).is_absolute():
                raise InvalidInput(f"--allowed_root {shown(root)} must be an absolute path")

    def check(self, request, names: tuple[str, ...], stage: str) -> None:
        paths = {name: getattr(request, name) for name in names if getattr(request, name)}
        for name, value in paths.items():
            check_path_bounds(name, value)
        for name, value in paths.items():
            self.check_place(name, value, stage)
        if OUTPUT in paths:
            check_output_name(paths[OUTPUT])
            check_apart(paths[OUTPUT], [value for name, value in paths.items() if name != OUTPUT])

    def check_place(self, name: str, value: str, stage: str) -> None:
        if not PurePath(value).is_absolute():
            raise InvalidInput(f"{name} {shown(value)} must be an absolute path (as the {stage} worker sees it)")
        if self.allowed_roots and not self.allows(value):
            raise InvalidInput(f"{name} {shown(value)} is outside the directories the {stage} service accepts "
                               f"(--allowed_root {' '.join(self.allowed_roots)})")

    def allows(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(contains(root, real) for root in map(os.path.realpath, self.allowed_roots))


def check_path_bounds(name: str, value) -> None:
    """A path within what Linux accepts (PATH_MAX, NAME_MAX), and no NUL: cheap checks first."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a path, got {shown(value)}")
    size = len(os.fsencode(value))
    if size > MAX_PATH_BYTES:
        raise InvalidInput(f"{name} is {size} bytes long, over the {MAX_PATH_BYTES} bytes a path may have")
    if "\0" in value:
        raise InvalidInput(f"{name} {shown(value)} contains a NUL character")
    longest = max(value.split("/"), key=lambda part: len(os.fsencode(part)))
    if (name_size := len(os.fsencode(longest))) > NAME_MAX:
        raise InvalidInput(f"{name} {shown(value)} has a name of {name_size} bytes, over the {NAME_MAX} bytes a "
                           f"file name may have ({shown(longest)})")


ANY_ABSOLUTE_PATH = PathPolicy()
