"""A `dbrx worker builder` process killed with SIGKILL mid-build: nothing partial is
visible, another worker finishes the job once the lease expires, and the engine's files
are byte-for-byte those of an uninterrupted build. From when the job is seen leased the
test holds the job store (tests/faults.py, store_held): the worker stops at its next
report, mid-build, and cannot publish before the kill."""

import json

from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.services.builder.stage import BUILDER
from dbrx_serve.shared.artifacts import MANIFEST, verify_manifest
from dbrx_serve.shared.jobstore import BUILD, JobState, JobStore, StoreConfig
from tests.faults import sigkill_mid_work, wait_for
from tests.shared.jobstore.conftest import database_url  # noqa: F401 (a fixture: SQLite, and PostgreSQL when set)

from .conftest import leftovers, run_build

LEASE_SECONDS = 2.0


def built_files(engine_dir) -> dict[str, str]:
    """Every file's sha256 but config.json's (it records the output directory)."""
    files = json.loads((engine_dir / MANIFEST).read_text())["files"]
    return {f["path"]: f["sha256"] for f in files if f["path"] != "config.json"}


def test_a_sigkilled_builder_worker_leaves_nothing_visible_and_another_finishes(checkpoints, database_url,
                                                                                tmp_path):
    checkpoint = checkpoints(tp_size=2)
    out = tmp_path / "engine"
    with JobStore(StoreConfig(database_url)) as store:
        job = store.submit(BUILD, BuildOptions(str(checkpoint), str(out)).to_dict(), output_dir=str(out))
        sigkill_mid_work(store, job.id, "builder", database_url, LEASE_SECONDS, lambda: leftovers(out))
        killed = store.get(job.id)
        assert (killed.state, killed.attempts) == (JobState.RUNNING, 1)
        assert not out.exists() and leftovers(out)[0].startswith(".engine.tmp-")  # only its temporary sibling

        rescuer = BUILDER.worker(store, lease_seconds=10, poll_seconds=0.05)
        done = wait_for(rescuer.run_once, "the expired lease to be taken over")
        assert (done.id, done.state, done.attempts) == (job.id, JobState.SUCCEEDED, 2)

    assert leftovers(out) == ["engine"]  # the dead worker's temporary directory was removed
    verify_manifest(out)
    reference = run_build(checkpoint, tmp_path / "reference")
    assert built_files(out) == built_files(reference) and "rank1.safetensors" in built_files(out)
