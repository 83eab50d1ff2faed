"""Conversion jobs under faults, each in a real `dbrx worker converter` process: killed
with SIGKILL mid-conversion (nothing partial is visible, another worker finishes the job
once the lease expires, with the files of an uninterrupted run); the disk full mid-write
and the output directory read-only (the job fails naming the path, and nothing is left
that a later stage could take); the HF checkpoint read short of memory (retried, and
reported as what it is, not as a bad checkpoint)."""

import json
import multiprocessing
import re

from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.services.converter.stage import CONVERTER
from dbrx_serve.shared.artifacts import MANIFEST, verify_manifest
from dbrx_serve.shared.jobstore import CONVERT, JobState, JobStore, StoreConfig
from tests.faults import (WAIT, ended, file_size_limit, limit_address_space, read_only_prefix, sigkill_mid_work,
                          start_worker_process, wait_for, write_huge_model)

from .conftest import leftovers

LEASE_SECONDS = 2.0
FILE_SIZE_LIMIT = 512 << 10  # the job store's file stays under it; a float32 rank file of SHARD_SPEC does not
TEMP = r"\.ckpt\.tmp-[0-9a-f]{32}"  # the name of a temporary sibling of an output named ckpt
SPAWN = multiprocessing.get_context("spawn")


def run_to_the_end(database_url: str, options: ConvertOptions, max_attempts: int, **worker_args):
    """Submit a conversion and run a worker process on it until the job ends; the ended job."""
    with JobStore(StoreConfig(database_url)) as store:
        job = store.submit(CONVERT, options.to_dict(), output_dir=options.output_dir, max_attempts=max_attempts)
        worker = start_worker_process("converter", database_url, LEASE_SECONDS, **worker_args)
        try:
            return wait_for(lambda: ended(store, job.id), "the job to end")
        finally:
            worker.kill()
            worker.wait(WAIT)


def manifest_files(ckpt) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((ckpt / MANIFEST).read_text())["files"]}


def test_sigkilled_worker_leaves_nothing_visible_and_another_finishes(shard_model, database_url, tmp_path):
    """From when the job is seen leased the test holds the job store (tests/faults.py,
    store_held): the worker stops at its next report, mid-conversion, and cannot publish."""
    out = tmp_path / "ckpt"
    options = ConvertOptions(str(shard_model[0]), str(out), tp_size=2, dtype="bfloat16")
    with JobStore(StoreConfig(database_url)) as store:
        job = store.submit(CONVERT, options.to_dict(), output_dir=str(out))
        sigkill_mid_work(store, job.id, "converter", database_url, LEASE_SECONDS, lambda: leftovers(out))
        killed = store.get(job.id)
        assert (killed.state, killed.attempts) == (JobState.RUNNING, 1) and killed.progress < 1
        assert not out.exists() and len(leftovers(out)) == 1  # only its hidden temporary sibling

        rescuer = CONVERTER.worker(store, lease_seconds=10, poll_seconds=0.05)
        done = wait_for(rescuer.run_once, "the expired lease to be taken over")
        assert done.id == job.id and done.state is JobState.SUCCEEDED and done.attempts == 2

    assert leftovers(out) == ["ckpt"]  # the dead worker's temporary directory was removed
    verify_manifest(out)
    reference = tmp_path / "reference"
    convert(ConvertOptions(str(shard_model[0]), str(reference), tp_size=2, dtype="bfloat16"))
    assert manifest_files(out) == manifest_files(reference) and len(manifest_files(out)) == 3


def test_a_full_disk_fails_the_job_naming_the_file_and_leaves_nothing(shard_model, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) on the worker stands for the disk: writes past it fail
    as writes to a full disk do. Retried (space may be freed), then failed, naming the file."""
    out = tmp_path / "out" / "ckpt"
    options = ConvertOptions(str(shard_model[0]), str(out), dtype="float32")
    failed = run_to_the_end(f"sqlite:///{tmp_path / 'jobs.db'}", options, max_attempts=2,
                            prefix=file_size_limit(FILE_SIZE_LIMIT))
    assert (failed.state, failed.attempts) == (JobState.FAILED, 2)
    written = re.escape(str(out.parent)) + "/" + TEMP + r"/rank0\.safetensors\.scratch"
    assert re.fullmatch(rf"failed after 2 attempts; last error: OSError: \[Errno 27\] File too large: '{written}'",
                        failed.message), failed.message
    assert list(out.parent.iterdir()) == []  # nothing published, no temporary directory left


def test_a_read_only_output_directory_fails_the_job_at_once_naming_it(shard_model, tmp_path):
    parent = tmp_path / "read-only"
    parent.mkdir()
    options = ConvertOptions(str(shard_model[0]), str(parent / "ckpt"))
    try:
        failed = run_to_the_end(f"sqlite:///{tmp_path / 'jobs.db'}", options, max_attempts=3,
                                prefix=read_only_prefix(parent))
    finally:
        parent.chmod(0o755)
    assert (failed.state, failed.attempts) == (JobState.FAILED, 1)
    assert re.fullmatch(rf"(Read-only file system|Permission denied): '{re.escape(str(parent))}/{TEMP}' "
                        r"\(not retried: another attempt would fail the same way\)", failed.message), failed.message
    assert list(parent.iterdir()) == []


def convert_short_of_memory(database_url: str, runs: int) -> None:
    """In a spawned process: `runs` conversion attempts with 512 MiB of address space to spare."""
    with JobStore(StoreConfig(database_url)) as store:
        worker = CONVERTER.worker(store, poll_seconds=0.05)
        limit_address_space(512 << 20)
        for _ in range(runs):
            worker.run_once()


def test_a_checkpoint_read_short_of_memory_is_retried_and_reported_as_what_it_is(tmp_path):
    """Mapping the checkpoint's 1 GiB file fails for want of memory: the machine's fault, not
    the checkpoint's (shared/hf_checkpoint.py once called it a bad checkpoint, for good)."""
    model = write_huge_model(tmp_path / "huge")
    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with JobStore(StoreConfig(database_url)) as store:
        job = store.submit(CONVERT, ConvertOptions(str(model), str(tmp_path / "ckpt")).to_dict(), max_attempts=2)
        child = SPAWN.Process(target=convert_short_of_memory, args=(database_url, 2))
        child.start()
        child.join(WAIT)
        assert child.exitcode == 0
        messages, failed = [e.message for e in store.events(job.id)], store.get(job.id)
    reason = rf"\w+Error: Cannot allocate memory.* \(while reading {re.escape(str(model / 'model.safetensors'))}\)"
    assert any(re.fullmatch(f"attempt 1 of 2 failed, will retry: {reason}", m) for m in messages), messages
    assert (failed.state, failed.attempts) == (JobState.FAILED, 2)
    assert re.fullmatch(f"failed after 2 attempts; last error: {reason}", failed.message), failed.message
