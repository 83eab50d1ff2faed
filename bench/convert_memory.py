"""Peak memory of a conversion against the model's size: the lazy reading at work.

    python bench/convert_memory.py --model_dir /tmp/mem-model --make   # once: a ~1.9 GB float32 DBRX
    python bench/convert_memory.py --model_dir /tmp/mem-model --workers 1
    python bench/convert_memory.py --model_dir /tmp/mem-model --workers 2 --tp_size 2

Each measurement runs in a fresh interpreter and prints one JSON line: the
model's bytes on disk, the largest layer's bytes, the baseline RSS after
imports, the peak RSS (ru_maxrss) of the converting process and of the
largest worker process it spawned, and the converting process's sampled peak
anonymous and file-backed RSS.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SPEC = dict(d_model=1024, n_heads=8, kv_n_heads=2, n_layers=8, ffn_hidden_size=2048, moe_num_experts=8,
            moe_top_k=2, vocab_size=32000, max_seq_len=512, init_std=0.02)


def make_model(model_dir: str) -> None:
    from dbrx_serve.shared.testing import TinySpec, save_tiny_model
    save_tiny_model(model_dir, TinySpec(**SPEC), tokenizer=False, max_shard_size="500MB")


def layer_bytes() -> int:
    s = SPEC
    qkv = (s["d_model"] + 2 * s["kv_n_heads"] * s["d_model"] // s["n_heads"]) * s["d_model"]
    experts = 3 * s["moe_num_experts"] * s["ffn_hidden_size"] * s["d_model"]
    return 4 * (qkv + s["d_model"] ** 2 + experts + s["moe_num_experts"] * s["d_model"] + 2 * s["d_model"])


class RssSampler:
    """Peak anonymous and file-backed RSS of this process, sampled from /proc every 5 ms
    (file-backed pages are the safetensors mappings: clean page cache the kernel can drop)."""

    def __init__(self):
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for line in open("/proc/self/status"):
                key = line.split(":")[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]) * 1024)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(args) -> dict:
    from dbrx_serve.services.converter.convert import convert
    from dbrx_serve.services.converter.options import ConvertOptions

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory(dir=args.scratch) as out:
        start = time.perf_counter()
        with RssSampler() as sampler:
            convert(ConvertOptions(args.model_dir, str(Path(out) / "ckpt"), dtype=args.dtype,
                                   tp_size=args.tp_size, workers=args.workers,
                                   use_weight_only=args.weight_only is not None,
                                   weight_only_precision=args.weight_only or "int8"))
        seconds = time.perf_counter() - start
    model_bytes = sum(p.stat().st_size for p in Path(args.model_dir).glob("*.safetensors"))
    return {"workers": args.workers, "tp_size": args.tp_size, "dtype": args.dtype, "weight_only": args.weight_only,
            "model_bytes": model_bytes,
            "layer_bytes": layer_bytes(), "baseline_rss": baseline,
            "peak_rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_rss_anon_main": sampler.peak["RssAnon"], "peak_rss_file_main": sampler.peak["RssFile"],
            "peak_rss_largest_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            "seconds": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--make", action="store_true", help="write the test model first")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--tp_size", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--weight_only", choices=["int8", "int4"], default=None)
    p.add_argument("--scratch", default=None, help="where the checkpoint is written (then deleted)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.make:
        make_model(args.model_dir)
    if args.inner:
        print(json.dumps(measure(args)))
        return
    inner = [sys.executable, __file__, "--inner"] + [a for a in sys.argv[1:] if a != "--make"]
    sys.exit(subprocess.call(inner))


if __name__ == "__main__":
    main()
