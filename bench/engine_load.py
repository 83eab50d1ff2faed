"""How long an engine takes to load, with the default quick check (sizes,
small files' sha256, safetensors headers) and with --verify_checksums
(every byte hashed), from a cold and from a warm page cache.

    python bench/engine_load.py [--workdir DIR] [--keep] [--device cpu]

It makes a random DBRX of a few GB with transformers (d_model 1024, 8 layers,
16 experts of 1792, top-4, DBRX's vocabulary; float32: about 3.7 GB), converts
and builds it with this repository's own converter and builder, then loads
the engine in a fresh process per measurement: imports (torch's lazy ones
included) happen before the timer. "cold" drops the engine's files from the
page cache first (posix_fadvise DONTNEED; no root needed). The folder is
deleted afterwards unless --keep. Prints one JSON line; the times split as
the engine's own log line does: the check, then the weights onto the device.
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = dict(d_model=1024, n_heads=16, kv_n_heads=4, n_layers=8, ffn_hidden_size=1792, moe_num_experts=16,
            moe_top_k=4, max_seq_len=2048)
MEASURE = """
import json, logging, sys, time, torch
from dbrx_serve.services.inference.engine import Engine
with torch.device("meta"):
    torch.nn.Embedding(2, 2)  # torch's lazy imports, outside the timer
records = []
handler = logging.Handler(); handler.emit = records.append
logging.getLogger("dbrx_serve.inference").addHandler(handler)
logging.getLogger("dbrx_serve.inference").setLevel(logging.INFO)
started = time.perf_counter()
Engine.from_dir(sys.argv[1], sys.argv[2], verify_checksums=sys.argv[3] == "1")
total = time.perf_counter() - started
_, _, check, gigabytes, _, load, speed = next(r.args for r in records if "GB/s" in r.msg)
print(json.dumps({"seconds": round(total, 2), "check_seconds": round(check, 2), "weights_seconds": round(load, 2),
                  "weights_gb": round(gigabytes, 2), "gb_per_s": round(speed, 2)}))
"""


def make_engine(root: Path) -> Path:
    from dbrx_serve.services.builder.build import build
    from dbrx_serve.services.builder.options import BuildOptions
    from dbrx_serve.services.converter.convert import convert
    from dbrx_serve.services.converter.options import ConvertOptions
    from dbrx_serve.shared.testing import TinySpec, save_tiny_model

    save_tiny_model(root / "model", TinySpec(**SPEC), max_shard_size="2GB")
    convert(ConvertOptions(str(root / "model"), str(root / "ckpt"), dtype="float32"))
    shutil.rmtree(root / "model")
    build(BuildOptions(str(root / "ckpt"), str(root / "engine"), max_batch_size=8, max_input_len=512,
                       max_seq_len=2048, max_num_tokens=2048))
    shutil.rmtree(root / "ckpt")
    return root / "engine"


def drop_from_page_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def load_once(engine: Path, device: str, checksums: bool, cold: bool) -> dict:
    if cold:
        drop_from_page_cache(engine)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(engine), device, "1" if checksums else "0"],
                         capture_output=True, text=True, check=True).stdout
    return {"verify_checksums": checksums, "page_cache": "cold" if cold else "warm", **json.loads(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the engine")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="engine-load-"))
    try:
        started = time.perf_counter()
        engine = make_engine(root)
        made = time.perf_counter() - started
        runs = [load_once(engine, args.device, checksums, cold) for checksums in (False, True) for cold in (True, False)]
        size = sum(p.stat().st_size for p in engine.rglob("*") if p.is_file())
        print(json.dumps({"engine_bytes": size, "spec": SPEC, "dtype": "float32", "device": args.device,
                          "make_seconds": round(made, 1), "loads": runs}))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
