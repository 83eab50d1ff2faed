"""A `dbrx worker converter` process killed with SIGKILL mid-conversion: nothing
partial is visible, another worker finishes the job after the lease expires, and
the files are byte-for-byte those of an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

import pytest

from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.services.converter.stage import CONVERTER
from dbrx_serve.shared.artifacts import MANIFEST, verify_manifest
from dbrx_serve.shared.jobstore import CONVERT, JobState, JobStore, StoreConfig
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

from .conftest import leftovers

# Big enough that a conversion takes a few seconds (28 groups), small enough to make quickly.
SLOW_SPEC = TinySpec(d_model=256, n_heads=4, kv_n_heads=2, n_layers=12, ffn_hidden_size=512, moe_num_experts=8,
                     vocab_size=510, seed=3)
WAIT = 120
LEASE_SECONDS = 2.0


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("slow-model")
    save_tiny_model(path, SLOW_SPEC, tokenizer=False, max_shard_size="5MB")
    return path


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def start_worker_process(database_url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dbrx_serve.cli.main", "worker", "converter",
                             "--database_url", database_url, "--lease_seconds", str(LEASE_SECONDS),
                             "--poll_seconds", "0.05"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def manifest_files(ckpt) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((ckpt / MANIFEST).read_text())["files"]}


def test_sigkilled_worker_leaves_nothing_visible_and_another_finishes(slow_model, database_url, tmp_path):
    out = tmp_path / "ckpt"
    options = ConvertOptions(str(slow_model), str(out), tp_size=2, dtype="bfloat16")
    with JobStore(StoreConfig(database_url)) as store:
        job = store.submit(CONVERT, options.to_dict(), output_dir=str(out))
        victim = start_worker_process(database_url)
        try:
            wait_for(lambda: any(e.progress > 0 for e in store.events(job.id)), "the first progress event")
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(WAIT)
        killed = store.get(job.id)
        assert killed.state is JobState.RUNNING and killed.progress < 1  # it died mid-conversion
        assert not out.exists() and len(leftovers(out)) == 1  # only its hidden temporary sibling

        rescuer = CONVERTER.worker(store, lease_seconds=10)
        done = wait_for(lambda: rescuer.run_once(), "the expired lease to be taken over")
        assert done.id == job.id and done.state is JobState.SUCCEEDED and done.attempts == 2

    assert leftovers(out) == ["ckpt"]  # the dead worker's temporary directory was removed
    verify_manifest(out)
    reference = tmp_path / "reference"
    convert(ConvertOptions(str(slow_model), str(reference), tp_size=2, dtype="bfloat16"))
    assert manifest_files(out) == manifest_files(reference) and len(manifest_files(out)) == 3
