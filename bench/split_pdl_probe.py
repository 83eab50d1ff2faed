"""A probe of one GPU call (exploration, kept for its numbers): int4 expert and linear GEMMs over K
splits, tile widths, pipeline stages and warps at one token (`--tokens 1`, with programmatic dependent
launch timed on a chain of 800 small kernels in a CUDA graph), or over tile heights too at more tokens.

    python bench/split_pdl_probe.py OUT.json [--tokens 64 128]

Writes OUT.json: per shape, [block_m, block_n, stages, warps, split, us, GB/s], fastest first
(bench/results/gemm_tiles_probe_64_tokens.json). bench/results/gemm_split_pdl_probe.json came from
its first version: keys `sweep` and `cols`, rows without block_m (16), and a table of each compiled
gemm_kernel's registers and shared memory (`kernels`) that this version leaves out.
"""
import argparse
import json
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, "bench")
from gemm_tune import gemm_case_of  # noqa: E402

from dbrx_serve.services.inference.kernels.device import wait_for_inputs  # noqa: E402
from dbrx_serve.services.inference.kernels.tuner import GemmCase, graph_ms  # noqa: E402
from dbrx_serve.services.inference.kernels.tuning import GemmConfig  # noqa: E402


@triton.jit
def step_kernel(x_ptr, y_ptr, N, PDL: tl.constexpr, BLOCK: tl.constexpr):
    wait_for_inputs(PDL)
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + o, mask=o < N)
    tl.store(y_ptr + o, v + 1.0, mask=o < N)


def pdl_chain(dev) -> dict:
    """us a kernel in a CUDA graph of 800 dependent small kernels, without and with PDL (and whether the
    sums came out right: each kernel adds 1 to the previous one's output)."""
    found = {}
    for n, grid in ((6144, 1), (6144 * 64, 384)):
        x = torch.zeros(n, device=dev)
        bufs = [x, torch.empty_like(x)]
        for pdl in (False, True):
            def chain():
                for i in range(800):
                    step_kernel[(grid,)](bufs[i % 2], bufs[(i + 1) % 2], n, PDL=pdl,
                                         BLOCK=triton.next_power_of_2(n // grid), launch_pdl=pdl)
            g = torch.cuda.CUDAGraph()
            chain()
            with torch.cuda.graph(g):
                chain()
            x.zero_()
            g.replay()
            torch.cuda.synchronize()
            ok = float(bufs[0].min()) == float(bufs[0].max()) == 800.0
            ms = triton.testing.do_bench(g.replay, warmup=5, rep=50, return_mode="median")
            found[f"n{n}_pdl{int(pdl)}"] = {"us_per_kernel": round(ms * 1e3 / 800, 2), "graph_ok": ok}
    return found


def sweep(name: str, tokens: int, dev) -> dict:
    case = GemmCase(*gemm_case_of(name, "int4", tokens, dev))
    if tokens == 1:
        grid = [(16, bn, st, 4, s) for bn in (64, 128, 256) for st in (3, 4, 5) for s in (1, 2, 3, 4, 5, 6, 8, 12)]
        grid += [(16, 256, st, 8, s) for st in (3, 4, 5) for s in (1, 2, 3, 4, 5, 6, 8, 12)]
    else:
        grid = [(bm, bn, st, w, 1) for bm in (32, 64) for bn in (64, 128) for st in (4, 5, 6) for w in (4, 8)]
        grid += [(16, 128, st, 4, 1) for st in (4, 5, 6)]
    results = []
    for bm, bn, st, w, s in grid:
        cfg = GemmConfig(block_m=bm, block_n=bn, block_k=64, split_k=s, num_warps=w, num_stages=st, dequant=3)
        try:
            ms = graph_ms(cfg, case)
            results.append([bm, bn, st, w, s, round(ms * 1e3, 1), round(case.bytes_read / ms / 1e6)])
        except Exception as error:  # a tile that does not fit
            results.append([bm, bn, st, w, s, None, type(error).__name__])
    results.sort(key=lambda r: r[5] or 1e9)
    return {"shape": name, "tokens": tokens, "default": case.default.to_dict(), "bytes": case.bytes_read,
            "columns": "block_m block_n stages warps split us gbs", "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1])
    parser.add_argument("--shapes", nargs="+", default=["moe_up", "moe_down", "qkv", "dense"])
    args = parser.parse_args()
    dev = torch.device("cuda")
    started = time.time()
    out = {"device": torch.cuda.get_device_name(dev), "sweeps": []}
    for tokens in args.tokens:
        for name in args.shapes:
            out["sweeps"].append(sweep(name, tokens, dev))
            best = out["sweeps"][-1]["results"][:3]
            print(f"{name} at {tokens}: {best}", file=sys.stderr, flush=True)
    if 1 in args.tokens:
        out["pdl"] = pdl_chain(dev)
    out["seconds"] = round(time.time() - started, 1)
    json.dump(out, open(args.out, "w"))
    print(json.dumps({k: v for k, v in out.items() if k != "sweeps"}))


if __name__ == "__main__":
    main()
