"""bench/decode.py --smoke: the benchmark's own code on a tiny model on the CPU, so
that the script a GPU run depends on stays runnable (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "decode.py"


def test_decode_smoke_prints_one_json_object_with_every_run(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--precision", "bf16", "int4",
                          "--plot", str(tmp_path / "plot.png")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["runs"]) == {"bf16-2L", "int4-2L"} and result["copy_bandwidth_gbs"] > 0
    for run in result["runs"].values():
        assert [(d["batch"], d["context"]) for d in run["decode"]] == [(1, 32), (4, 32)]
        for d in run["decode"]:
            assert d["tokens_per_s"] > 0 and d["bytes_per_step"] > 0 and d["ms_per_step"] > 0
            assert 0 <= d["fraction_of_floor"] <= 1.5  # rounded to 3 places: a slow, shared CPU can show 0.0
        assert run["prefill"][0]["prompt_tokens"] == 48 and run["prefill"][0]["seconds"] > 0
    assert (tmp_path / "plot.png").stat().st_size > 10_000
