"""A probe (exploration, kept for its numbers): the expert GEMMs around the engine's default at a token or a
few, over tile widths, warps (4, 8), the default K split and twice it, and pipeline stages (3-5): what the
tuner's grids (services/inference/kernels/tuner.py) leave out.

    python bench/gemm_warps_stages_probe.py OUT.json [--precision int8] [--tokens 1 8]    # on the GPU

Each configuration timed as the tuner times it (a CUDA graph of 20 launches, median). Prints, per shape and
token count, the default's time and the fastest configuration; OUT.json holds every row.
Results: bench/results/gemm_int8_warps_stages_probe.json (bench/notes-gpu.md, thirteenth session).
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

from dbrx_serve.services.inference.kernels.tuner import GemmCase, replay_ms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    device, rows = torch.device("cuda"), []
    for shape, tokens in itertools.product(("moe_up", "moe_down"), args.tokens):
        case = GemmCase(*gemm_case_of(shape, args.precision, tokens, device))
        d = case.default
        default_us = round(replay_ms(case.launch(d), 20) * 1e3, 1)
        case_rows = []
        for block_n, warps, split, stages in itertools.product((64, 128, 256), (4, 8), (d.split_k, 2 * d.split_k),
                                                               (3, 4, 5)):
            config = replace(d, block_n=block_n, num_warps=warps, split_k=split, num_stages=stages)
            try:
                us = round(replay_ms(case.launch(config), 20) * 1e3, 1)
            except Exception as error:  # a configuration that does not fit: say so and go on
                us = type(error).__name__
            case_rows.append({"shape": shape, "tokens": tokens, "default_us": default_us, **config.to_dict(), "us": us})
        rows += case_rows
        timed = [r for r in case_rows if isinstance(r["us"], float)]
        print(json.dumps({"shape": shape, "tokens": tokens, "default": d.to_dict(), "default_us": default_us,
                          "best": min(timed, key=lambda r: r["us"])}), file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}) + "\n")
    print(json.dumps({"device": torch.cuda.get_device_name(), "rows": len(rows)}))


if __name__ == "__main__":
    main()
