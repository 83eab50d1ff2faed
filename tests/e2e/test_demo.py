"""`dbrx demo`, README's product tour, end to end as a person runs it: converter and builder
services over one SQLite job store, int8 weight-only conversion and build submitted through the
SDK, the inference service streaming through the SDK next to the reference line, every service
stopped at the end. (Its time is printed by the demo and reported, not asserted.)"""

import re
import subprocess
import sys

from dbrx_serve.shared.artifacts import verify_manifest
from dbrx_serve.shared.jobstore import JobState, JobStore


def test_demo_runs_the_tour_through_the_services_and_the_sdk(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dbrx_serve", "demo", "--workdir", str(tmp_path),
                             "--max_output_len", "12"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    outputs = [line for line in result.stdout.splitlines() if line.startswith("Output [Text 0 Beam 0]:")]
    assert len(outputs) == 2 and all(len(line) > len('Output [Text 0 Beam 0]: ""') for line in outputs)
    assert re.search(r"the first \d+ of 12 tokens agree", result.stdout)
    assert re.search(r"inference +127\.0\.0\.1:\d+ +\(metrics http://127\.0\.0\.1:\d+/metrics\)", result.stdout)
    assert "from dbrx_serve.client import Client" in result.stdout and "the demo took" in result.stdout
    for artifact in ("checkpoint", "engine"):
        verify_manifest(tmp_path / artifact)
    with JobStore.open(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        jobs = store.list_jobs()
    assert sorted((j.kind, j.state) for j in jobs) == [("build", JobState.SUCCEEDED), ("convert", JobState.SUCCEEDED)]
    assert next(j for j in jobs if j.kind == "convert").spec["weight_only_precision"] == "int8"
