"""Time the GEMM kernel's launch configurations on DBRX's shapes, on the GPU.

    python bench/gemm_tune.py --precision int4 bf16 --tokens 1 64 [--out tune.json]

For each layer shape (the attention projections; the experts' gate+up and down
with random top-4 routing over 16 experts), weight precision and number of
tokens, every candidate configuration is timed (CUDA-graph replays, median) and
reported with the bytes it must read and the GB/s reached; the best per case
comes first. Prints one JSON object last.
"""

import argparse
import json
import sys
from dataclasses import replace

import torch
import triton

from dbrx_serve.services.inference.kernels.gemm import (FORMATS, GEMV_TILES, SMALL_TILES, GemmConfig, Weights, gemm,
                                                        linear_config, moe_config)
from dbrx_serve.services.inference.kernels.moe import align, route
from dbrx_serve.shared.quantization import SCHEMES

H, FFN, E, TOP_K, QKV = 6144, 10752, 16, 4, 8192
SHAPES = {"qkv": (QKV, H, 1), "dense": (H, H, 1), "moe_up": (2 * FFN, H, E), "moe_down": (H, FFN, E)}


def candidates(default: GemmConfig, precision: str, gated: bool, one_row: bool) -> list[GemmConfig]:
    """Tiles, K splits and (for int weights) the ways to dequantize, around the default; at one row
    of int weights also gemv_kernel's tiles, warps and splits, and the 16-row tensor-core tile."""
    if one_row and precision != "bf16":
        gemv = GemmConfig(block_m=1, **GEMV_TILES.get(FORMATS[precision], {}), split_k=default.split_k)
        tensor_core = GemmConfig(block_m=16, **SMALL_TILES[FORMATS[precision]], split_k=default.split_k)
        if precision == "int4":
            tensor_core = replace(tensor_core, dequant=3)
        splits = sorted({max(1, default.split_k // 2), default.split_k, 2 * default.split_k, 4 * default.split_k})
        return [tensor_core] + [replace(gemv, block_n=n, block_k=k, num_warps=w, split_k=s)
                                for n in (64, 128, 256) for k in (32, 64, 128) for w in (4, 8) for s in splits]
    splits = {default.split_k} if gated else {default.split_k, 2 * default.split_k}
    tiles = [(64, 128, 4), (128, 128, 4), (64, 256, 3)]
    dequant = {"bf16": [0], "int8": [0, 1], "int4": [1, 2, 3]}[precision]
    return [replace(default, block_n=n, block_k=k, num_stages=st, split_k=s, dequant=d)
            for n, k, st in tiles for s in sorted(splits) for d in dequant]


def make_weights(n: int, k: int, experts: int, precision: str, device) -> Weights:
    if precision == "bf16":
        return Weights.of(torch.randn(experts, n, k, dtype=torch.bfloat16, device=device).mul_(0.02))
    cols = n * SCHEMES[precision].bits // 8
    q = torch.randint(-128, 128, (experts, k, cols), dtype=torch.int8, device=device)
    return Weights.of(q, torch.full((experts, n), 1e-3, dtype=torch.bfloat16, device=device), precision)


def timed(fn) -> float:
    """Median ms of a CUDA-graph replay of fn (launch gaps out of the number)."""
    fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")


def case(name: str, precision: str, tokens: int, device) -> dict:
    n, k, experts = SHAPES[name]
    w = make_weights(n, k, experts, precision, device)
    gated, moe = name == "moe_up", experts > 1
    x = torch.randn(tokens * (TOP_K if name == "moe_down" else 1), k, dtype=torch.bfloat16, device=device)
    rows, ids = tokens, None
    if moe:
        router = torch.randn(E, H, device=device)
        _, ids = route(torch.randn(tokens, H, dtype=torch.bfloat16, device=device), router, TOP_K, 1.0)
        rows = tokens * TOP_K
        default = moe_config(rows, w, experts)
        active = int(ids.unique().numel())
    else:
        default = linear_config(tokens, w)
        active = 1
    bytes_read = w.tensor.numel() * w.tensor.element_size() // experts * active
    results = []
    for config in [default] + candidates(default, precision, gated, one_row=max(1, rows // experts) == 1):
        columns = w.n if gated and config.block_m == 1 and config.split_k > 1 else w.n // 2 if gated else w.n
        out = torch.empty(config.split_k, rows, columns, dtype=torch.float32 if config.split_k > 1 else torch.bfloat16,
                          device=device)
        target = out if config.split_k > 1 else out[0]
        moe_args = (*align(ids, E, 0, config.block_m), rows) if moe else None
        try:
            ms = timed(lambda: gemm(x, w, target, config, moe=moe_args, x_row_div=TOP_K if gated else 1,
                                    gated=gated))
        except Exception as error:  # a configuration that does not fit: report and go on
            results.append({"config": config.to_dict(), "error": type(error).__name__})
            continue
        results.append({"config": config.to_dict(), "us": round(ms * 1e3, 1),
                        "gbs": round(bytes_read / ms / 1e6, 1), "default": config == default})
    results.sort(key=lambda r: r.get("us", 1e12))
    return {"shape": name, "precision": precision, "tokens": tokens, "active_experts": active,
            "bytes": bytes_read, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=["int4", "int8", "bf16"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    cases = []
    for precision in args.precision:
        for name in args.shapes:
            for tokens in args.tokens:
                cases.append(case(name, precision, tokens, device))
                best, default = cases[-1]["results"][0], next(r for r in cases[-1]["results"] if r.get("default"))
                print(f"{precision:5} {name:9} M={tokens:4}: best {best.get('us')} us {best.get('gbs')} GB/s "
                      f"{best['config']} | default {default.get('us')} us {default.get('gbs')} GB/s",
                      file=sys.stderr, flush=True)
    text = json.dumps({"device": torch.cuda.get_device_name(), "cases": cases})
    if args.out:
        open(args.out, "w").write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
