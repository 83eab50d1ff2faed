"""Artifact directories (checkpoints, engines): written to a hidden temporary
sibling and renamed into place, so a reader never sees a half-written one, and
described by `manifest.json` (DESIGN.md): each file's size and sha256, the
producer, the inputs (with their own manifests' hashes), the options and the
format version.

    with artifact_dir(out, producer="converter", inputs=[model_dir], options={...}) as tmp:
        ...write files into tmp...
    # here `out` exists, complete, with manifest.json; on an exception nothing is left

The manifest holds no timestamps: the same inputs and options give the same
manifest, byte for byte.
"""

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import InvalidInput

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
CHUNK = 1 << 20
ALWAYS_HASHED_BYTES = 16 << 20  # config, tokenizer and scale files: hashed even by the quick check


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, an output path that is a file or a non-empty directory (unless
    overwrite), under a file, or overlapping an input (replacing it would delete the input).
    Missing parent directories are fine: artifact_dir makes them."""
    path = Path(path).absolute()
    check_apart(path, inputs)
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"output path {path} exists and is not a directory: choose another --output_dir")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InvalidInput(f"output directory {path} exists and is not empty: pass --overwrite to replace it")
    ancestor = next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
        raise InvalidInput(f"output directory {path} cannot be made: {ancestor} is a file")
    return path


def check_apart(path: Path, inputs: Iterable[str | Path]) -> None:
    for source in inputs:
        source = Path(source).absolute()
        if path == source or source in path.parents or path in source.parents:
            raise InvalidInput(f"output directory {path} overlaps the input {source}: writing it would "
                               "replace the input; choose a directory of its own")


def rank_file(root: str | Path, rank: int) -> Path:
    """A rank's weights in a checkpoint or engine directory."""
    return Path(root) / f"rank{rank}.safetensors"


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def read_json(path: str | Path, missing: str | None = None) -> dict:
    """The JSON object in a file; InvalidInput naming the file when it is not one. An absent
    file is {} when `missing` is None (an optional file), else InvalidInput ending with `missing`."""
    path = Path(path)
    if not path.is_file():
        if missing is None:
            return {}
        raise InvalidInput(f"{path} is missing: {missing}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{path} should hold a JSON object, not {type(value).__name__}")
    return value


def temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temporary siblings left by a writer that was killed (call only when no
    other writer of this output can be running, e.g. a job retried after a lost lease)."""
    path = Path(path).absolute()
    stale = [p for p in path.parent.glob(temp_prefix(path) + "*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def input_entry(path: str | Path) -> dict[str, Any]:
    """An input as the manifest records it: its path and, when it has one, its manifest's hash."""
    path = Path(path).absolute()
    manifest = path / MANIFEST
    return {"path": str(path), "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None}


def artifact_files(root: Path) -> list[str]:
    """Every file under root but the manifest, as sorted relative POSIX paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() != MANIFEST)


def file_entries(root: Path) -> list[dict[str, Any]]:
    return [{"path": name, "size": (root / name).stat().st_size, "sha256": file_sha256(root / name)}
            for name in artifact_files(root)]


def write_manifest(root: str | Path, producer: str | dict, inputs: Iterable[str | Path] = (),
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe every file now under `root` in root/manifest.json; returns the manifest."""
    root = Path(root)
    producer = producer if isinstance(producer, dict) else {"name": producer, "version": _version()}
    manifest = {"format_version": MANIFEST_VERSION, "producer": producer,
                "inputs": [input_entry(p) for p in inputs], "options": options or {},
                "files": file_entries(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    manifest = read_json(path, missing=f"{root} is not a complete artifact directory")
    try:
        _ = [(f["path"], f["size"], f["sha256"]) for f in manifest["files"]]
    except (KeyError, TypeError) as err:
        raise InvalidInput(f"{path} is not a valid manifest ({err!r})") from None
    return manifest


def verify_manifest(root: str | Path, checksums: bool = True) -> dict[str, Any]:
    """Check every listed file's size and sha256, and that no unlisted file is present.

    checksums=False is the quick check for large artifacts: sizes, the sha256 of small files
    only, and each safetensors file's header against its size (a truncated or overwritten
    file is still caught; a flipped byte inside a tensor is not)."""
    root = Path(root)
    manifest = read_manifest(root)
    listed = {f["path"] for f in manifest["files"]}
    for entry in manifest["files"]:
        _verify_file(root, entry, checksums)
    extra = [name for name in artifact_files(root) if name not in listed]
    if extra:
        raise InvalidInput(f"{root / extra[0]} is not listed in {root / MANIFEST}")
    return manifest


def _verify_file(root: Path, entry: dict[str, Any], checksums: bool) -> None:
    path = root / entry["path"]
    if not path.is_file():
        raise InvalidInput(f"{path} is listed in {root / MANIFEST} but missing")
    if path.stat().st_size != entry["size"]:
        raise InvalidInput(f"{path} has {path.stat().st_size} bytes, the manifest says {entry['size']}")
    if not checksums and path.suffix == ".safetensors":
        from .safetensors_header import read_header  # here: it imports torch, which job servers need not

        read_header(path)
    elif (checksums or entry["size"] <= ALWAYS_HASHED_BYTES) and file_sha256(path) != entry["sha256"]:
        raise InvalidInput(f"{path} does not match the sha256 in {root / MANIFEST}: the file is corrupt")


@contextmanager
def artifact_dir(path: str | Path, producer: str | dict, inputs: Iterable[str | Path] = (),
                 options: dict[str, Any] | None = None, overwrite: bool = False,
                 before_publish: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of `path`; on success write the manifest and
    rename it into place; on any exception (Cancelled included) remove it.

    `before_publish` runs between the manifest and the rename, the last point
    to refuse: a job worker confirms there that it still holds its lease."""
    inputs = list(inputs)
    path = check_output_dir(path, overwrite, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f"{temp_prefix(path)}{uuid.uuid4().hex}"
    temp.mkdir()
    try:
        yield temp
        write_manifest(temp, producer, inputs, options)
        _fsync_dir(temp)
        if before_publish is not None:
            before_publish()
        _replace(temp, check_output_dir(path, overwrite, inputs))
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _replace(temp: Path, path: Path) -> None:
    """Rename temp to path; an existing directory (already allowed) is moved aside first, then deleted."""
    old = None
    if path.is_dir() and any(path.iterdir()):
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
        os.rename(path, old)
    os.replace(temp, path)  # an empty directory at `path` is replaced
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version() -> str:
    from dbrx_serve import __version__
    return __version__
