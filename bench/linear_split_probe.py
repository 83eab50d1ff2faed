"""A probe (exploration, kept for its numbers): the attention projections' int4 GEMM from 16 to 128 tokens,
timed alone and with the sum of the K splits it leaves (splits.py's sum_splits), over tile heights and
widths and K splits, on the GPU.

At 64 tokens the default (64 x 128 tiles, K split in 8: 512 programs) writes S x M x N float32 partial
sums, 16.8 MB for qkv, beside its 25 MB of weights, and its reader reads them back; the tuner
(kernels/tuner.py) times the GEMM alone, so it does not see that. This times both ways.

    python bench/linear_split_probe.py OUT.json [--tokens 16 32 64 128] [--shapes qkv dense]
        [--block_m 16 32 64] [--block_n 64 128] [--splits 1 2 4 8] [--warps 0] [--stages 0]   # 0: the default's

Prints one JSON object last: per shape and token count the default, the fastest alone and the fastest
with its sum, and every row (config, us alone, us with the sum, the partial sums' MB).
"""
import argparse
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm_tune import gemm_case_of  # noqa: E402

from dbrx_serve.services.inference.kernels.gemm import warps_for  # noqa: E402
from dbrx_serve.services.inference.kernels.splits import sum_splits  # noqa: E402
from dbrx_serve.services.inference.kernels.tuner import GemmCase, graph_ms, replay_ms  # noqa: E402


def summed(case: GemmCase, config):
    """The GEMM's launch and then the sum of its splits (none unsplit), as TritonWeightOnlyLinear runs them."""
    launch = case.launch(config)
    if config.split_k == 1:
        return launch
    return lambda: sum_splits(launch(), case.x.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--shapes", nargs="+", default=["qkv", "dense"])
    parser.add_argument("--block_m", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--block_n", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--warps", type=int, nargs="+", default=[0], help="0: gemm.py's warps_for")
    parser.add_argument("--stages", type=int, nargs="+", default=[0], help="0: the default's")
    args = parser.parse_args()
    cases = []
    for name, tokens in itertools.product(args.shapes, args.tokens):
        case = GemmCase(*gemm_case_of(name, "int4", tokens, torch.device("cuda")))
        rows = []
        for block_m, block_n, split, warps, stages in itertools.product(args.block_m, args.block_n, args.splits,
                                                                        args.warps, args.stages):
            if block_m > max(16, tokens):
                continue
            config = replace(case.default, block_m=block_m, block_n=block_n, split_k=split,
                             num_warps=warps or warps_for(block_m, case.w),
                             num_stages=stages or case.default.num_stages)
            partials_mb = split * tokens * case.w.n * 4 / 1e6 if split > 1 else 0.0
            rows.append({"config": config.to_dict(), "default": config == case.default,
                         "us": round(graph_ms(config, case) * 1e3, 1),
                         "us_with_sum": round(replay_ms(summed(case, config)) * 1e3, 1),
                         "partials_mb": round(partials_mb, 1)})
        cases.append({"shape": name, "tokens": tokens, "weight_mb": round(case.bytes_read / 1e6, 1),
                      "default": next((r for r in rows if r["default"]), None), "fastest_alone": min(rows, key=lambda r: r["us"]),
                      "fastest_with_sum": min(rows, key=lambda r: r["us_with_sum"]), "rows": rows})
        print(json.dumps({k: cases[-1][k] for k in ("shape", "tokens", "default", "fastest_with_sum")}),
              file=sys.stderr, flush=True)
    text = json.dumps({"gpu": torch.cuda.get_device_name(), "cases": cases})
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
