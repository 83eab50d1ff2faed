"""A probe of one GPU call (exploration, kept for its numbers): what the K-split sums' launches cost a
decode step, as an upper bound on taking them out. bench/decode.py runs twice in turn with the engine as
it is and twice with kernels/splits.py's sum_splits replaced by a tensor of zeros kept a shape (no
launch; the numbers after it are wrong, the routing then takes the same four experts a layer: as many
bytes a step).

    python bench/split_sums_bound.py OUT_DIR --batch 1 2 4

Writes OUT_DIR/split_sums_bound.json: per run, the mode and bench/decode.py's decode rows.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import decode  # noqa: E402

import dbrx_serve.services.inference.kernels.gemm as gemm  # noqa: E402
import dbrx_serve.services.inference.kernels.moe as moe  # noqa: E402


def zeros_kept(cache: dict):
    """sum_splits' signature, no launch: zeros of its output's shape, one tensor a shape."""
    def sums(parts: torch.Tensor, dtype: torch.dtype, gated: bool = False, rows_per_out: int = 1) -> torch.Tensor:
        splits, rows, width = parts.shape
        key = (rows // rows_per_out, width // 2 if gated else width, dtype, parts.device)
        if key not in cache:
            cache[key] = torch.zeros(key[:2], dtype=dtype, device=parts.device)
        return cache[key]
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--batch", nargs="+", default=["1", "2", "4"])
    parser.add_argument("--layers", default="40")
    args = parser.parse_args()
    real, fake = gemm.sum_splits, zeros_kept({})
    runs = []
    for i, mode in enumerate(["engine", "no_split_sums", "engine", "no_split_sums"]):
        gemm.sum_splits = moe.sum_splits = fake if mode == "no_split_sums" else real
        rows = decode.decode_rows(os.path.join(args.out_dir, f"split_sums_bound_{i}.json"), "int4", args.batch,
                                  args.layers)
        runs.append({"mode": mode, "decode": rows})
        print(json.dumps(runs[-1]), flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "runs": runs}
    with open(os.path.join(args.out_dir, "split_sums_bound.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
