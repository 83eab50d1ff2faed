"""Artifact directories: atomic rename, manifest contents, verification, refusals."""

import errno
import json
import shutil

import pytest

from dbrx_serve.shared.artifacts import (MANIFEST, artifact_dir, check_output_dir, file_sha256,
                                         remove_stale_temps, verify_manifest)
from dbrx_serve.shared.errors import Cancelled, InvalidInput


def siblings(path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def write_artifact(out, inputs=(), options=None, overwrite=False, files=None):
    with artifact_dir(out, "test-producer", inputs, options or {"x": 1}, overwrite) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(f".{out.name}.tmp-")
        assert overwrite or not (out / MANIFEST).exists()  # nothing visible until the rename
        for name, text in (files or {"a.txt": "alpha", "sub/b.bin": "beta"}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return json.loads((out / MANIFEST).read_text())


def test_manifest_lists_files_inputs_options_and_verifies(tmp_path):
    upstream = tmp_path / "up"
    write_artifact(upstream)
    plain = tmp_path / "plain"  # an input that is no artifact: no manifest hash
    plain.mkdir()
    manifest = write_artifact(tmp_path / "out", inputs=[upstream, plain], options={"tp_size": 2})
    assert manifest["format_version"] == 1 and manifest["producer"]["name"] == "test-producer"
    assert manifest["options"] == {"tp_size": 2}
    assert manifest["inputs"] == [{"path": str(upstream), "manifest_sha256": file_sha256(upstream / MANIFEST)},
                                  {"path": str(plain), "manifest_sha256": None}]
    assert [(f["path"], f["size"]) for f in manifest["files"]] == [("a.txt", 5), ("sub/b.bin", 4)]
    assert verify_manifest(tmp_path / "out") == manifest
    assert siblings(tmp_path / "out") == ["out", "plain", "up"]


def test_same_inputs_give_the_same_manifest_bytes(tmp_path):
    write_artifact(tmp_path / "one")
    write_artifact(tmp_path / "two")
    assert (tmp_path / "one" / MANIFEST).read_bytes() == (tmp_path / "two" / MANIFEST).read_bytes()


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "a.txt").write_text("alphA"), "a.txt does not match the sha256"),
    (lambda d: (d / "a.txt").write_text("alphabet"), "a.txt has 8 bytes, the manifest says 5"),
    (lambda d: (d / "sub" / "b.bin").unlink(), "sub/b.bin is listed in .* but missing"),
    (lambda d: (d / "extra.txt").write_text("?"), "extra.txt is not listed"),
    (lambda d: (d / MANIFEST).unlink(), "manifest.json is missing"),
    (lambda d: (d / MANIFEST).write_text("{"), "manifest.json is not valid JSON"),
    (lambda d: (d / MANIFEST).write_text("{}"), "is not a valid manifest"),
])
def test_verify_names_the_bad_file(damage, match, tmp_path):
    write_artifact(tmp_path / "out")
    damage(tmp_path / "out")
    with pytest.raises(InvalidInput, match=match):
        verify_manifest(tmp_path / "out")


def tamper_manifest(root, name: str, **entry) -> None:
    """Change the manifest's entry of `name` (as someone who can write the artifact could)."""
    manifest = json.loads((root / MANIFEST).read_text())
    next(f for f in manifest["files"] if f["path"] == name).update(entry)
    (root / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("entry,match", [
    ({"path": "../outside.txt"}, r"lists '\.\./outside\.txt', which is not a path inside the artifact"),
    ({"path": "sub/../../outside.txt"}, "which is not a path inside the artifact"),
    ({"path": "/etc/hostname"}, "which is not a path inside the artifact"),
    ({"path": 7}, "lists 7, which is not a path inside the artifact"),
    ({"size": "5"}, "the entry of 'a.txt' needs a size in bytes and a sha256"),
    ({"size": -1}, "needs a size in bytes"),
    ({"sha256": None}, "needs a size in bytes and a sha256"),
])
def test_a_tampered_manifest_is_refused_before_any_file_is_read(entry, match, tmp_path):
    (tmp_path / "outside.txt").write_text("alpha")  # a.txt's bytes: an entry moved onto it would verify
    write_artifact(tmp_path / "out")
    tamper_manifest(tmp_path / "out", "a.txt", **entry)
    with pytest.raises(InvalidInput, match=match):
        verify_manifest(tmp_path / "out", checksums=False)


@pytest.mark.parametrize("checksums", [True, False])
@pytest.mark.parametrize("name,target", [("a.txt", "outside/a.txt"), ("sub", "outside")])
def test_a_symbolic_link_out_of_the_artifact_is_refused(name, target, checksums, tmp_path):
    """The link's target has the very bytes the manifest lists: only the link itself gives it away."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "a.txt").write_text("alpha")
    (tmp_path / "outside" / "b.bin").write_text("beta")
    write_artifact(tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / name) if name == "sub" else (tmp_path / "out" / name).unlink()
    (tmp_path / "out" / name).symlink_to(tmp_path / target)
    with pytest.raises(InvalidInput, match=rf"out/{name} is a symbolic link to .*{target}, outside .*out: an "
                                           "artifact holds its own files"):
        verify_manifest(tmp_path / "out", checksums=checksums)


@pytest.mark.parametrize("error", [RuntimeError("boom"), Cancelled("cancelled"), KeyboardInterrupt()])
def test_failure_or_cancel_leaves_nothing(error, tmp_path):
    with pytest.raises(type(error)):
        with artifact_dir(tmp_path / "out", "p") as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise error
    assert siblings(tmp_path / "out") == []


def test_refusals_and_overwrite(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)
    with pytest.raises(InvalidInput, match="cannot be made: .*file is a file"):
        check_output_dir(tmp_path / "file" / "sub" / "out")
    write_artifact(tmp_path / "new" / "parents" / "out")  # missing parents are made
    verify_manifest(tmp_path / "new" / "parents" / "out")
    write_artifact(tmp_path / "out")
    with pytest.raises(InvalidInput, match="not empty: pass --overwrite"):
        write_artifact(tmp_path / "out")
    write_artifact(tmp_path / "out", overwrite=True, files={"new.txt": "n"})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "new.txt"]
    assert siblings(tmp_path / "out") == ["file", "new", "out"]
    (tmp_path / "empty").mkdir()
    write_artifact(tmp_path / "empty")  # an empty directory is fine without overwrite
    verify_manifest(tmp_path / "empty")


def test_remove_stale_temps(tmp_path):
    (tmp_path / ".out.tmp-dead").mkdir()
    (tmp_path / ".other.tmp-x").mkdir()
    assert [p.name for p in remove_stale_temps(tmp_path / "out")] == [".out.tmp-dead"]
    assert siblings(tmp_path / "out") == [".other.tmp-x"]


def test_an_output_overlapping_an_input_once_resolved_is_refused_and_the_input_kept(tmp_path):
    """`..` collapsed and links followed: else --overwrite would replace the input with the output."""
    model = tmp_path / "model"
    write_artifact(model)
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(model)
    for out, source in [(tmp_path / "x" / ".." / "model", model), (model, tmp_path / "link"),
                        (tmp_path / "link" / "ckpt", model), (tmp_path / "link", model)]:
        with pytest.raises(InvalidInput, match="overlaps the input"):
            write_artifact(out, inputs=[source], overwrite=True)
    verify_manifest(model)
    assert siblings(model) == ["link", "model", "x"]


def test_an_output_that_is_a_symbolic_link_is_refused_before_any_work(tmp_path):
    """The output replaces its path by a rename, which fails on a link at the very end."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidInput, match="dangling is a symbolic link to .*nowhere, which does not exist"):
        check_output_dir(tmp_path / "dangling")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InvalidInput, match="link is a symbolic link to .*real: name the directory itself"):
        check_output_dir(tmp_path / "link", overwrite=True)


def test_a_loop_of_links_above_the_output_is_an_os_error_before_any_work(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(OSError) as error:
        check_output_dir(tmp_path / "loop" / "out")
    assert error.value.errno == errno.ELOOP


@pytest.fixture
def weights_artifact(tmp_path, monkeypatch):
    """An artifact with a rank file over the quick check's hashing threshold (lowered for the test)."""
    import torch
    from safetensors.torch import save_file

    from dbrx_serve.shared import artifacts

    monkeypatch.setattr(artifacts, "ALWAYS_HASHED_BYTES", 1024)
    with artifact_dir(tmp_path / "engine", "test-producer") as tmp:
        save_file({"w": torch.arange(4096, dtype=torch.float32)}, tmp / "rank0.safetensors")
        (tmp / "config.json").write_text('{"max_seq_len": 256}')
    return tmp_path / "engine"


def overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_the_quick_check_reads_sizes_headers_and_small_files_only(weights_artifact):
    rank = weights_artifact / "rank0.safetensors"
    overwrite(rank, rank.stat().st_size - 4, b"\xff\xff\xff\xff")  # a flipped weight, same size
    verify_manifest(weights_artifact, checksums=False)
    with pytest.raises(InvalidInput, match="rank0.safetensors does not match the sha256"):
        verify_manifest(weights_artifact)


@pytest.mark.parametrize("name,offset,data,match", [
    ("rank0.safetensors", 0, b"\xff" * 8, "rank0.safetensors is truncated or not a safetensors file"),
    ("config.json", 16, b"512", "config.json does not match the sha256"),
])
def test_the_quick_check_still_catches_a_broken_header_or_a_changed_config(weights_artifact, name, offset, data,
                                                                           match):
    overwrite(weights_artifact / name, offset, data)
    with pytest.raises(InvalidInput, match=match):
        verify_manifest(weights_artifact, checksums=False)
