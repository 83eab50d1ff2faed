"""Log lines carry the job or request id they are about, as text or as one JSON object a line."""

import json
import logging
import subprocess
import sys

from dbrx_serve.shared import logs


def test_json_lines_carry_the_job_id_inside_its_context_only(capfd):
    logs.configure("info", "json")
    log = logging.getLogger("dbrx_serve.test")
    with logs.job_context("6f1c0000-0000-4000-8000-000000000000"):
        log.info("started %s", "now")
    log.warning("outside")
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert lines[0]["job_id"] == "6f1c0000-0000-4000-8000-000000000000" and lines[0]["message"] == "started now"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "dbrx_serve.test" and "time" in lines[0]
    assert "job_id" not in lines[1] and lines[1]["message"] == "outside"
    logs.configure()


def test_text_lines_show_the_request_id(capfd):
    logs.configure("info", "text")
    logs.set_request_id("req-7")
    logging.getLogger("dbrx_serve.test").info("hello")
    logs.set_request_id(None)
    assert "[request req-7] hello" in capfd.readouterr().err
    logs.configure()


def test_dbrx_takes_log_format_json_before_the_subcommand(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dbrx_serve", "--log_format", "json", "--log_level", "info",
                             "jobs", "list", "--database_url", f"sqlite:///{tmp_path / 'jobs.db'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(json.loads(line)["level"] for line in result.stderr.splitlines() if line.strip())
