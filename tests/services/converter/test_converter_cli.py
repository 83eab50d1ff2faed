"""`dbrx serve converter` as a process (with a local worker thread), driven by
`dbrx convert --server`, `dbrx jobs`, and stopped with SIGTERM."""

import json
import signal
import subprocess
import sys

from dbrx_serve.cli.main import main as dbrx
from dbrx_serve.shared.artifacts import verify_manifest

WAIT = 60


def start_server(database_url: str) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, "-m", "dbrx_serve.cli.main", "serve", "converter", "--port", "0",
                               "--database_url", database_url, "--local_workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    assert line.startswith("listening on "), line
    return server, line.split()[-1]


def test_serve_convert_jobs_and_stop(shard_model, database_url, tmp_path, capsys):
    server, target = start_server(database_url)
    try:
        out = tmp_path / "ckpt"
        assert dbrx(["convert", "--model_dir", str(shard_model[0]), "--output_dir", str(out), "--tp_size", "2",
                     "--moe_ep_size", "2", "--server", target]) == 0
        assert f"checkpoint written to {out}" in capsys.readouterr().out
        assert dbrx(["jobs", "list", "--server", target, "--json"]) == 0
        [job] = json.loads(capsys.readouterr().out)
        assert (job["kind"], job["state"], job["spec"]["moe_ep_size"]) == ("convert", "SUCCEEDED", 2)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(WAIT) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1, "moe_tp_size": 1, "moe_ep_size": 2}
    verify_manifest(out)
