"""kernels/device.py: the DBRX_PDL switch, read once when the package is imported."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("value, on", [(None, True), ("0", False)], ids=["unset", "off"])
def test_dbrx_pdl_in_the_environment_turns_programmatic_dependent_launch_off(value, on):
    env = {k: v for k, v in os.environ.items() if k != "DBRX_PDL"} | ({"DBRX_PDL": value} if value else {})
    code = "from dbrx_serve.services.inference.kernels.device import PDL_ON; print(PDL_ON)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(on)
