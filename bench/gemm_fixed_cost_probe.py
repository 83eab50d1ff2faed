"""A probe of one GPU call (exploration, kept for its numbers): how an expert GEMM's time grows with the
experts it reads. One row a routed expert (tokens routed one to an expert, top_k 1), the configuration the
engine launches at one token (block_m 16, int4 tiles, its K split), 1 to 16 experts: the slope of time
against bytes is the rate a kernel reaches once running; the intercept, the time a launch costs beyond
its bytes (start, the first loads' latency, the last programs' tail). Each launch is timed in a CUDA
graph of `--repeat` launches of it back to back (no host launch in the number).

    python bench/gemm_fixed_cost_probe.py OUT.json --precision int4 bf16

Prints one JSON object last: per shape, precision and split, each count's us and GB/s and the line's
fit (us = intercept + bytes / rate).
"""
import argparse
import json
import sys
from dataclasses import replace

import torch

sys.path.insert(0, "bench")
from gemm_tune import gemm_case_of  # noqa: E402

from dbrx_serve.services.inference.kernels.tuner import GemmCase, replay_ms  # noqa: E402


def fit(points: list[tuple[float, float]]) -> dict:
    """Least squares us = intercept + bytes / rate over (bytes, us)."""
    n = len(points)
    mx, my = sum(b for b, _ in points) / n, sum(u for _, u in points) / n
    slope = sum((b - mx) * (u - my) for b, u in points) / sum((b - mx) ** 2 for b, _ in points)
    return {"intercept_us": round(my - slope * mx, 2), "rate_gbs": round(1e-3 / slope, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--precision", nargs="+", default=["int4"])
    parser.add_argument("--experts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--splits", type=int, nargs="+", default=[0], help="0: the engine's at one token")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    dev = torch.device("cuda")
    results = []
    for precision in args.precision:
        for name in ("moe_up", "moe_down"):
            torch.manual_seed(0)
            case = GemmCase(*gemm_case_of(name, precision, 1, dev))
            one_token = case.default
            for split in args.splits:
                config = replace(one_token, split_k=split or one_token.split_k)
                rows = []
                for experts in args.experts:
                    routed = GemmCase(case.op, case.w, 1, experts)  # top_k 1: a token an expert
                    routed.ids = torch.arange(experts, dtype=torch.int32, device=dev)[:, None]
                    us = replay_ms(routed.launch(config), args.repeat) * 1e3
                    rows.append({"experts": experts, "bytes": routed.bytes_read, "us": round(us, 2),
                                 "gbs": round(routed.bytes_read / us / 1e3, 1)})
                    print(json.dumps({"shape": name, "precision": precision, **rows[-1]}), flush=True)
                results.append({"shape": name, "precision": precision, "config": config.to_dict(), "rows": rows,
                                "fit": fit([(r["bytes"], r["us"]) for r in rows])})
                print(json.dumps(results[-1]["fit"]), flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "repeat": args.repeat, "results": results}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
