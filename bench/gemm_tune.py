"""Time the GEMM kernel's launch configurations on DBRX's shapes, on the GPU.

    python bench/gemm_tune.py --precision int4 int4g128 bf16 --tokens 1 64 [--mode fast] [--out tune.json]

For each layer shape (the attention projections; the experts' gate+up and down
with random top-4 routing over 16 experts), weight precision and number of
tokens (int4g64 / int4g128: group-wise int4), every candidate configuration (services/inference/kernels/tuner.py,
the code `dbrx build --tune` runs: `full`'s grid by default) is timed
(CUDA-graph replays, median) and reported with the bytes it must read and the
GB/s reached; the best per case comes first. Prints one JSON object last.

    ncu --clock-control none -k regex:gemm_kernel --launch-skip 2 --launch-count 1 --section WarpStateStats \
        python bench/gemm_tune.py --precision int4 --shapes moe_up --tokens 1 --launches 3

`--launches N` times nothing: it launches each case's default configuration N times, for a profiler.
"""

import argparse
import itertools
import json
import sys

import torch

from dbrx_serve.services.inference.kernels.gemm import Weights
from dbrx_serve.services.inference.kernels.tuner import MODES, GemmCase, random_weights, time_candidates
from dbrx_serve.services.inference.kernels.tuning import LINEAR, MOE_DOWN, MOE_UP
from dbrx_serve.shared.weight_only import engine_weight_shape

H, FFN, E, TOP_K, QKV = 6144, 10752, 16, 4, 8192
SHAPES = {"qkv": (LINEAR, QKV, H, 1), "dense": (LINEAR, H, H, 1), "moe_up": (MOE_UP, 2 * FFN, H, E),
          "moe_down": (MOE_DOWN, H, FFN, E)}


def meta_weights(n: int, k: int, experts: int, precision: str, gated: bool) -> Weights:
    """A weight's shape and format (bf16 [E, N, K]; int8 [E, K, N], int4 tiles [E, N/64, K/64, 2048] with
    scales [E, N]; int4g<G>: group-wise scales [E, K/G, N])."""
    if precision == "bf16":
        return Weights.of(torch.empty(experts, n, k, dtype=torch.bfloat16, device="meta"))
    scheme, _, group = precision.partition("g")
    scale = (experts, k // int(group), n) if group else (experts, n)
    shape = engine_weight_shape((experts,), n, k, scheme, 2 if gated else 1)
    return Weights.of(torch.empty(shape, dtype=torch.int8, device="meta"),
                      torch.empty(scale, dtype=torch.bfloat16, device="meta"), scheme, k)


def gemm_case_of(name: str, precision: str, tokens: int, device) -> tuple:
    """GemmCase's arguments for a layer shape: random weights on the device."""
    op, n, k, experts = SHAPES[name]
    return op, random_weights(meta_weights(n, k, experts, precision, op == MOE_UP), device), TOP_K, tokens


def case(name: str, precision: str, tokens: int, mode: str, device) -> dict:
    gemm_case = GemmCase(*gemm_case_of(name, precision, tokens, device))
    experts = SHAPES[name][3]
    bytes_read = gemm_case.bytes_read
    results = [{"config": t.config.to_dict(), "error": t.error} if t.ms is None else
               {"config": t.config.to_dict(), "us": round(t.ms * 1e3, 1), "gbs": round(bytes_read / t.ms / 1e6, 1),
                "default": t.config == gemm_case.default}
               for t in time_candidates(gemm_case, mode)]
    return {"shape": name, "precision": precision, "tokens": tokens,
            "active_experts": bytes_read * experts // gemm_case.w.tensor.nbytes, "bytes": bytes_read,
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=["int4", "int8", "bf16"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--mode", choices=MODES, default="full")
    parser.add_argument("--out", default=None)
    parser.add_argument("--launches", type=int, default=0, help="only launch each case's default this often")
    args = parser.parse_args()
    device = torch.device("cuda")
    if args.launches:
        for precision, name, tokens in itertools.product(args.precision, args.shapes, args.tokens):
            gemm_case = GemmCase(*gemm_case_of(name, precision, tokens, device))
            launch = gemm_case.launch(gemm_case.default)
            for _ in range(args.launches):
                launch()
            torch.cuda.synchronize()
            print(json.dumps({"shape": name, "precision": precision, "tokens": tokens,
                              "config": gemm_case.default.to_dict(), "launches": args.launches}))
        return
    cases = []
    for precision in args.precision:
        for name in args.shapes:
            for tokens in args.tokens:
                cases.append(case(name, precision, tokens, args.mode, device))
                best, default = cases[-1]["results"][0], next((r for r in cases[-1]["results"] if r.get("default")), {})
                print(f"{precision:5} {name:9} M={tokens:4}: best {best.get('us')} us {best.get('gbs')} GB/s "
                      f"{best['config']} | default {default.get('us')} us {default.get('gbs')} GB/s",
                      file=sys.stderr, flush=True)
    text = json.dumps({"device": torch.cuda.get_device_name(), "cases": cases})
    if args.out:
        open(args.out, "w").write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
