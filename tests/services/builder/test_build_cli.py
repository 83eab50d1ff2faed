"""`dbrx build` in-process (job store on a SQLite file) and `--server` against
`dbrx serve builder` with a `dbrx worker builder` process; exit codes and
messages on failure."""

import json
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager

import torch

from dbrx_serve.shared.artifacts import verify_manifest


def dbrx(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """A `dbrx ...` run to its end; one that hangs fails the test after `timeout`."""
    return subprocess.run([sys.executable, "-m", "dbrx_serve", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@contextmanager
def background(*args):
    """A `dbrx ...` process, stopped with SIGTERM afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "dbrx_serve", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_in_process_build_and_the_job_it_leaves(checkpoints, tmp_path):
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = dbrx("build", "--checkpoint_dir", checkpoints(), "--output_dir", tmp_path / "engine",
                  "--max_seq_len", 128, "--database_url", database, "--log_level", "verbose")
    assert result.returncode == 0, result.stderr
    assert f"engine written to {tmp_path / 'engine'}" in result.stdout
    verify_manifest(tmp_path / "engine")
    config = json.loads((tmp_path / "engine" / "config.json").read_text())
    assert config["build_config"]["max_seq_len"] == 128
    assert config["build_config"]["build_options"]["log_level"] == "verbose"
    if not torch.cuda.is_available():  # the default --tune fast has no GPU to time on here
        assert config["build_config"]["kernel_tuning"] == {}
        assert "kernel tuning: skipped, no CUDA device" in result.stderr
    listed = json.loads(dbrx("jobs", "list", "--database_url", database, "--json").stdout)
    assert [(j["kind"], j["state"]) for j in listed] == [("build", "SUCCEEDED")]


def test_failed_build_exits_1_with_the_job_message(checkpoints, tmp_path):
    ckpt = shutil.copytree(checkpoints(), tmp_path / "ckpt")
    (ckpt / "config.json").write_text("{}")
    result = dbrx("build", "--checkpoint_dir", ckpt, "--output_dir", tmp_path / "engine",
                  "--database_url", f"sqlite:///{tmp_path / 'jobs.db'}")
    assert result.returncode == 1
    assert "failed" in result.stderr and "config.json has 2 bytes, the manifest says" in result.stderr
    assert not (tmp_path / "engine").exists()


def test_bad_limits_exit_2_before_any_job(tmp_path):
    result = dbrx("build", "--checkpoint_dir", tmp_path, "--tokens_per_block", 48,
                  "--database_url", f"sqlite:///{tmp_path / 'jobs.db'}")
    assert result.returncode == 2 and "--tokens_per_block 48 must be a power of two" in result.stderr
    result = dbrx("build", "--checkpoint_dir", tmp_path, "--tune", "fastest")
    assert result.returncode == 2 and "--tune: invalid choice: 'fastest'" in result.stderr


def test_build_through_a_server_and_a_worker_process(checkpoints, tmp_path):
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    root = tmp_path.parent  # this session's temporary directories: the checkpoints' and this test's
    with background("serve", "builder", "--port", 0, "--database_url", database, "--allowed_root", root) as server, \
            background("worker", "builder", "--database_url", database, "--poll_seconds", 0.2,
                       "--allowed_root", root):
        line = server.stdout.readline()
        assert line.startswith("listening on "), server.stderr.read() if server.poll() is not None else line
        address = line.split()[-1]
        result = dbrx("build", "--server", address, "--checkpoint_dir", checkpoints(tp_size=2),
                      "--output_dir", tmp_path / "engine", "--workers", 2)
        refused = dbrx("build", "--server", address, "--checkpoint_dir", tmp_path, "--max_beam_width", 2)
        outside = dbrx("build", "--server", address, "--checkpoint_dir", checkpoints(), "--output_dir", "/etc/engine")
    assert result.returncode == 0, result.stderr
    verify_manifest(tmp_path / "engine")
    assert refused.returncode == 2 and "max_beam_width 2 is not supported" in refused.stderr
    assert outside.returncode == 2
    assert "output_dir '/etc/engine' is outside the directories the builder service accepts" in outside.stderr


def test_a_relative_allowed_root_is_refused_at_start(tmp_path):
    result = dbrx("worker", "builder", "--database_url", f"sqlite:///{tmp_path / 'jobs.db'}", "--allowed_root", "data",
                  timeout=60)
    assert result.returncode == 2 and "--allowed_root 'data' must be an absolute path" in result.stderr
