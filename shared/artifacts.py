"""Artifact directories (checkpoints, engines): written to a hidden temporary
sibling and renamed into place, so a reader never sees a half-written one, and
described by `manifest.json` (docs/trtllm-checkpoint.md, "manifest.json"):
each file's size and sha256, the producer, the inputs (with their own
manifests' hashes), the options and the format version.

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

from .errors import InvalidInput, shown

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
CHUNK = 1 << 20
NAME_MAX = 255  # bytes in one file name (Linux file systems)
UNIQUE_HEX = 32  # len(uuid4().hex): the tail of a temporary sibling's name
ALWAYS_HASHED_BYTES = 16 << 20  # config, tokenizer and scale files: hashed even by the quick check


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, an output path whose name leaves no room for its temporary
    sibling, that overlaps an input (replacing it would delete the input), that is a symbolic
    link (publishing replaces the link, never its target), a file, a non-empty directory
    (unless overwrite), or under a file. Missing parent directories are fine: artifact_dir
    makes them. A file-system error other than a missing path (a loop of links, a name too
    long) is raised here, before any work, not taken for a missing path."""
    path = Path(path).absolute()
    check_output_name(path)
    check_apart(path, inputs)
    check_not_link(path)
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"output path {shown(path)} exists and is not a directory: choose another --output_dir")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InvalidInput(f"output directory {shown(path)} exists and is not empty: pass --overwrite to replace it")
    ancestor = existing_ancestor(path)
    if not ancestor.is_dir():
        raise InvalidInput(f"output directory {shown(path)} cannot be made: {shown(ancestor)} is a file")
    return path


def check_output_name(path: str | Path) -> None:
    """The output is written to a sibling `.NAME.tmp-<32 hex>` first: NAME has that much less room."""
    path = Path(path)
    size, longest = len(os.fsencode(path.name)), NAME_MAX - len(temp_prefix(Path(""))) - UNIQUE_HEX
    if size > longest:
        raise InvalidInput(f"output directory {shown(path)} has a name of {size} bytes, over the {longest} "
                           f"bytes an output's name may have: its temporary sibling .NAME.tmp-<32 hex> must fit "
                           f"in {NAME_MAX}; choose a shorter name")


def check_apart(path: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is, holds or lies inside an input, compared as the file system
    will see them (`..` collapsed, symbolic links followed): the one place that decides,
    at submit (shared/options.py) and in the worker (here, through check_output_dir)."""
    real_path = os.path.realpath(path)
    for source in inputs:
        real_source = os.path.realpath(source)
        if contains(real_source, real_path) or contains(real_path, real_source):
            raise InvalidInput(f"output directory {shown(Path(path))} overlaps the input {shown(Path(source))}"
                               f"{_resolved(path, source, real_path, real_source)}: writing it would replace "
                               "the input; choose a directory of its own")


def _resolved(path, source, real_path: str, real_source: str) -> str:
    """How the two paths read resolved, when that differs from how they were given."""
    if (str(Path(path).absolute()), str(Path(source).absolute())) == (real_path, real_source):
        return ""
    return f" (resolved: {shown(Path(real_path))} and {shown(Path(real_source))})"


def contains(root: str, path: str) -> bool:
    """Whether `path` is `root` or lies under it (both absolute and resolved)."""
    return os.path.commonpath([path, root]) == root


def check_not_link(path: Path) -> None:
    if not path.is_symlink():
        return
    missing = "" if path.exists() else ", which does not exist"
    raise InvalidInput(f"output directory {shown(path)} is a symbolic link to {shown(Path(os.readlink(path)))}"
                       f"{missing}: name the directory itself (publishing an output replaces its path, "
                       "never a link's target)")


def existing_ancestor(path: Path) -> Path:
    """The nearest ancestor that exists. An error other than a missing one (a loop of links,
    a name too long, no permission) is raised, where Path.exists would call it missing."""
    for parent in path.parents:
        try:
            os.stat(parent)
            return parent
        except (FileNotFoundError, NotADirectoryError):
            continue
    raise AssertionError(f"{path} has no existing ancestor, not even /")


def rank_file(root: str | Path, rank: int) -> Path:
    """A rank's weights in a checkpoint or engine directory."""
    return Path(root) / f"rank{rank}.safetensors"


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """An OSError while writing `path` names it: a failed write names no file by itself, so a
    full disk or a file-size limit would say only "No space left on device"."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


def write_json(path: Path, value: dict) -> None:
    with writing(path):
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
    with writing(root / MANIFEST):
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest, each file entry checked: a relative path inside the artifact, a size, a sha256."""
    path = Path(root) / MANIFEST
    manifest = read_json(path, missing=f"{root} is not a complete artifact directory")
    try:
        _ = [(f["path"], f["size"], f["sha256"]) for f in manifest["files"]]
    except (KeyError, TypeError) as err:
        raise InvalidInput(f"{path} is not a valid manifest ({err!r})") from None
    for entry in manifest["files"]:
        _check_entry(path, entry)
    return manifest


def _check_entry(manifest: Path, entry: dict[str, Any]) -> None:
    name, size, sha256 = entry["path"], entry["size"], entry["sha256"]
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or name.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in name:
        raise InvalidInput(f"{manifest} lists {shown(name)}, which is not a path inside the artifact: the "
                           "manifest is tampered or corrupt; write the artifact again")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not isinstance(sha256, str):
        raise InvalidInput(f"{manifest}: the entry of {shown(name)} needs a size in bytes and a sha256, not "
                           f"{shown(size)} and {shown(sha256)}: the manifest is tampered or corrupt")


def check_links_inside(root: Path) -> None:
    """Refuse a symbolic link under root whose target lies outside it: reading an artifact must
    never read another directory's files."""
    real_root = os.path.realpath(root)
    for folder, subfolders, files in os.walk(root):  # links to folders are listed, not followed
        for path in (Path(folder) / name for name in (*subfolders, *files)):
            if path.is_symlink() and not contains(real_root, os.path.realpath(path)):
                raise InvalidInput(f"{path} is a symbolic link to {shown(Path(os.readlink(path)))}, outside "
                                   f"{root}: an artifact holds its own files; copy the file in, or write the "
                                   "artifact again")


def verify_manifest(root: str | Path, checksums: bool = True) -> dict[str, Any]:
    """Check every listed file's size and sha256, and that no unlisted file is present.

    checksums=False is the quick check for large artifacts: sizes, the sha256 of small files
    only, and each safetensors file's header against its size (a truncated or overwritten
    file is still caught; a flipped byte inside a tensor is not). Either way, a manifest entry
    that is no path inside the artifact, a symbolic link out of it, or a safetensors header
    that does not describe its own bytes is refused."""
    root = Path(root)
    manifest = read_manifest(root)
    check_links_inside(root)
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
    if path.suffix == ".safetensors":  # the header, whatever the manifest says (it may be tampered too)
        from .safetensors_header import read_header  # here: it imports torch, which job servers need not

        read_header(path)
    if (checksums or entry["size"] <= ALWAYS_HASHED_BYTES) and file_sha256(path) != entry["sha256"]:
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
