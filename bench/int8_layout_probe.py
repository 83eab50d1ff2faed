"""A probe (exploration, kept for its numbers): the experts' int8 GEMM with the weights stored [E, N, K]
(each output column's K run contiguous, as the float weights are) against the engine's [E, K, N] (the
checkpoint's [in, out]), on the same inputs, the same kernel (services/inference/kernels/gemm.py reads
either through its strides).

The engine's int8 tiles of 16 rows and up gather the bytes of a column's K run one by one (697
instructions a K step at 16 rows, bench/notes-gpu.md); one token takes gemv_kernel (32-bit words along N,
so [E, K, N] only). With K contiguous the tile loads whole runs; at one token it takes the 16-row tile
with a K split, as int4 does.

    python bench/int8_layout_probe.py OUT.json [--tokens 1 8 64]    # on the GPU; one JSON object last

Per shape and tokens: the engine's default on [E, K, N], and on [E, N, K] each tile configuration
swept (us, GB/s of the weights read), with the largest difference from the default's output.
"""
import argparse
import copy
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm_tune import gemm_case_of  # noqa: E402

from dbrx_serve.services.inference.kernels.gemm import GemmConfig, warps_for  # noqa: E402
from dbrx_serve.services.inference.kernels.splits import sum_splits  # noqa: E402
from dbrx_serve.services.inference.kernels.tuner import GemmCase, replay_ms  # noqa: E402


def column_major(case: GemmCase) -> GemmCase:
    """The same case (inputs, routing) with its int8 weight stored [E, N, K], viewed as [E, K, N]."""
    nk = copy.copy(case)
    nk.w = replace(case.w, tensor=case.w.tensor.transpose(1, 2).contiguous().transpose(1, 2))
    return nk


def configs(case: GemmCase) -> list[GemmConfig]:
    """Tiles of the default's height (16 rows at least), 64 or 128 columns and K rows, 3 or 4 stages, int
    to float by cast or by mantissa bits; K split at a token or two an expert."""
    block_m = max(16, case.default.block_m)
    splits = (1, 2, 4, 8) if case.one_row else (1,)
    return [GemmConfig(block_m=block_m, block_n=n, block_k=k, num_stages=stages, dequant=deq, split_k=s,
                       num_warps=warps_for(block_m, case.w))
            for n, k, stages, deq, s in itertools.product((64, 128), (64, 128), (3, 4), (0, 1), splits)]


def output(case: GemmCase, config: GemmConfig) -> torch.Tensor:
    """The launch's result in float32, its K splits added up as the engine does (splits.py)."""
    out = case.launch(config)()
    return (sum_splits(out, case.x.dtype, gated=case.gated) if config.split_k > 1 else out).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    dev = torch.device("cuda")
    cases = []
    for tokens, name in itertools.product(args.tokens, ("moe_up", "moe_down")):
        torch.manual_seed(0)
        case = GemmCase(*gemm_case_of(name, "int8", tokens, dev))
        reference = output(case, case.default)
        scale = reference.abs().max().clamp_min(1e-30)
        us = replay_ms(case.launch(case.default), 20) * 1e3
        default = {"config": case.default.to_dict(), "us": round(us, 1), "gbs": round(case.bytes_read / us / 1e3, 1)}
        nk, rows = column_major(case), []
        for config in configs(case):
            row = {"config": config.to_dict()}
            try:
                us = replay_ms(nk.launch(config), 20) * 1e3
                error = float((output(nk, config) - reference).abs().max() / scale)
                row.update(us=round(us, 1), gbs=round(case.bytes_read / us / 1e3, 1), max_error=error)
            except Exception as failure:  # a configuration that does not compile or fit: say so, go on
                row["error"] = f"{type(failure).__name__}: {str(failure)[-300:]}"
            rows.append(row)
        timed = [r for r in rows if "us" in r]
        best = min(timed, key=lambda r: r["us"]) if timed else None
        cases.append({"shape": name, "tokens": tokens, "bytes": case.bytes_read, "default_kn": default,
                      "best_nk": best, "rows": rows})
        print(json.dumps({k: cases[-1][k] for k in ("shape", "tokens", "default_kn", "best_nk")}), flush=True)
    text = json.dumps({"gpu": torch.cuda.get_device_name(), "cases": cases})
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
