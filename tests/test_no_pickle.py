"""No pickle anywhere in our Python sources: bytes from another process or a file must never
name code to run. A grep over every .py file of the repository (not virtual environments)
for pickle-family imports and calls, for the APIs that pickle implicitly (mpi4py's lower-case
collectives, torch.distributed's *_object collectives, numpy's allow_pickle) and for
`torch.load(` without `weights_only=True`. multiprocessing's own pickling between a process and
the children it spawned (shared/parallel.py) is not a deserialization of outside bytes."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANNED = {
    "a pickle-family import": re.compile(r"^\s*(import|from)\s+(c?pickle|_pickle|dill|cloudpickle|shelve|joblib)\b",
                                         re.M),
    "a pickle call": re.compile(r"\bc?pickle\.(loads?|dumps?|Unpickler|Pickler)\b"),
    "mpi4py's pickling collectives (use the buffer ones, Bcast and Allgather)": re.compile(
        r"\bcomm\.(bcast|allgather|gather|scatter|alltoall|send|recv|isend|irecv|sendrecv|reduce|allreduce)\("),
    "torch.distributed's pickling *_object collectives": re.compile(
        r"\b(broadcast_object_list|all_gather_object|gather_object|scatter_object_list|send_object_list|"
        r"recv_object_list)\("),
    "numpy's allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "pandas' read_pickle": re.compile(r"\bread_pickle\("),
}
TORCH_LOAD = re.compile(r"\btorch\.load\(")


def sources() -> list[Path]:
    """Every .py file of the repository but this one, outside hidden folders (.venv, .ci-venv, .git),
    caches and build outputs."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")
                         and name not in ("build", "__pycache__") and not name.endswith(".egg-info")]
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return [path for path in found if path != Path(__file__).resolve()]


def call_text(text: str, start: int) -> str:
    """The call opened at `start` (its parenthesis), up to the one that closes it."""
    depth = 0
    for end in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0 and text[end] == ")":
            return text[start:end + 1]
    return text[start:]


def findings(path: Path, root: Path = ROOT) -> list[str]:
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(root)
    found = [f"{where}:{text.count(chr(10), 0, m.start()) + 1}: {what}: {m.group(0).strip()}"
             for what, pattern in BANNED.items() for m in pattern.finditer(text)]
    found += [f"{where}:{text.count(chr(10), 0, m.start()) + 1}: torch.load without weights_only=True"
              for m in TORCH_LOAD.finditer(text)
              if not re.search(r"weights_only\s*=\s*True", call_text(text, m.end() - 1))]
    return found


def test_the_grep_sees_the_sources():
    names = {path.relative_to(ROOT).as_posix() for path in sources()}
    assert {"services/inference/world.py", "shared/rpc.py", "bench/world_step.py"} <= names
    assert not [name for name in names if name.startswith((".venv", ".ci-venv"))]


def test_no_pickle_and_no_torch_load_without_weights_only():
    assert [line for path in sources() for line in findings(path)] == []


def test_the_grep_catches_each_kind(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nx = pickle.loads(b)\ncomm.bcast(x, root=0)\ndist.all_gather_object(o, x)\n"
                   "np.load(f, allow_pickle=True)\ntorch.load(\n    f, map_location='cpu')\n"
                   "torch.load(f, weights_only=True)\n")
    kinds = list(BANNED)
    assert [line.split(": ")[1] for line in findings(bad, tmp_path)] == [*kinds[:5], "torch.load without weights_only=True"]
