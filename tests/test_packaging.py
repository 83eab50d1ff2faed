"""Packaging: everything installs under `dbrx_serve`, generated stubs are fresh."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_dbrx_serve(tmp_path):
    """No plain `services` or `shared` package may land in site-packages."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("dbrx_serve-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dbrx_serve"}
    names = zipfile.ZipFile(wheel).namelist()
    for module in ["dbrx_serve/shared/model.py", "dbrx_serve/services/tokenizer/__init__.py",
                   "dbrx_serve/shared/generated/dbrx/serve/v1/inference_pb2_grpc.py", "dbrx_serve/cli/main.py"]:
        assert module in names


def test_every_package_folder_is_listed_in_pyproject():
    """A sub-package missing from pyproject's explicit list would be left out of the wheel."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {"dbrx_serve": ROOT / "dbrx_serve", "dbrx_serve.shared": ROOT / "shared",
             "dbrx_serve.services": ROOT / "services"}
    found = set()
    for package, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            found.add(".".join([package, *init.parent.relative_to(folder).parts]))
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_generated_stubs_are_fresh(tmp_path):
    """Fails when protos/ changed and `python protos/generate.py` was not rerun."""
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    committed = ROOT / "shared" / "generated"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh == sorted(p.relative_to(committed) for p in committed.rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts)
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (committed / rel).read_bytes(), f"{rel} is stale: run protos/generate.py"


def test_import_needs_no_torch_for_the_client():
    code = "import sys, dbrx_serve.client; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
