"""Packaging: everything installs under `dbrx_serve`, generated stubs are fresh."""

import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once from a copy of what the build reads (pyproject.toml, README.md and
    the folders of pyproject's package-dir): pip builds in the source folder (build/, the egg-info), so
    two builds of the tree itself at once, in two test processes, break each other."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in set(SETUPTOOLS["package-dir"].values()):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    return next(out.glob("dbrx_serve-*.whl"))


def test_wheel_holds_only_dbrx_serve(wheel):
    """No plain `services` or `shared` package may land in site-packages."""
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dbrx_serve"}
    names = zipfile.ZipFile(wheel).namelist()
    for module in ["dbrx_serve/shared/model.py", "dbrx_serve/services/tokenizer/__init__.py",
                   "dbrx_serve/shared/generated/dbrx/serve/v1/inference_pb2_grpc.py", "dbrx_serve/cli/main.py"]:
        assert module in names


def test_every_package_folder_is_listed_in_pyproject():
    """A sub-package missing from pyproject's explicit list would be left out of the wheel."""
    listed = set(SETUPTOOLS["packages"])
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


CLIENT_CHECK = """
import importlib.util, sys
import dbrx_serve.client, dbrx_serve.protos
assert importlib.util.find_spec("torch") is None, "torch is installed"
assert "torch" not in sys.modules and len(dbrx_serve.protos.PROTO_FILES) == 6
print(dbrx_serve.client.Client.__name__)
"""


def test_the_client_installs_without_torch_and_passes_mypy_strict(wheel, tmp_path):
    """`pip install 'WHEEL[client]'` into a fresh venv (a real, non-editable install of this
    tree's wheel, by this environment's pip): no torch comes along, the SDK and the .proto files
    import, and `mypy --strict` passes on docs/examples/client.py (typing stubs for protobuf and
    grpc installed beside it). About 5 s here, most of it pip."""
    venv.create(tmp_path / "venv", with_pip=False)
    python = str(tmp_path / "venv" / "bin" / "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", f"{wheel}[client]", "mypy",
                    "types-protobuf", "types-grpcio"], check=True, capture_output=True, timeout=600)
    found = subprocess.run([python, "-c", CLIENT_CHECK], capture_output=True, text=True, cwd=tmp_path)
    assert found.returncode == 0 and found.stdout.strip() == "Client", found.stderr
    typed = subprocess.run([python, "-m", "mypy", "--strict", str(ROOT / "docs" / "examples" / "client.py")],
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert typed.returncode == 0, typed.stdout + typed.stderr
