"""`dbrx demo`, README's main job, end to end as a person runs it: converter and
builder services over one SQLite job store, then engine and reference outputs."""

import subprocess
import sys

from dbrx_serve.shared.artifacts import verify_manifest
from dbrx_serve.shared.jobstore import JobState, JobStore


def test_demo_runs_the_pipeline_and_engine_matches_reference(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dbrx_serve", "demo", "--workdir", str(tmp_path),
                             "--max_output_len", "12"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    outputs = [line for line in result.stdout.splitlines() if line.startswith("Output [Text 0 Beam 0]:")]
    assert len(outputs) == 2 and outputs[0] == outputs[1]  # engine (streamed) == reference
    for artifact in ("checkpoint", "engine"):
        verify_manifest(tmp_path / artifact)
    with JobStore.open(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        assert sorted((j.kind, j.state) for j in store.list_jobs()) == [
            ("build", JobState.SUCCEEDED), ("convert", JobState.SUCCEEDED)]
