"""A probe of one GPU call (exploration, kept for its numbers): the int4 GEMMs at a few tokens against
their K split, every split from 1 to 16 and not only the powers of two the tuner tries
(services/inference/kernels/tuner.py `wide`). A launch's programs run in waves of (programs a
multiprocessor holds) x (multiprocessors); a last wave that is nearly empty leaves the GPU reading with
a few programs for a whole program's time. Reports each split's programs and waves beside its time.

    python bench/split_waves_probe.py OUT.json --tokens 1 2 4

Prints one JSON object last.
"""
import argparse
import json
import sys
from dataclasses import replace

import torch

sys.path.insert(0, "bench")
from gemm_tune import gemm_case_of  # noqa: E402

from dbrx_serve.services.inference.kernels.device import num_sms  # noqa: E402
from dbrx_serve.services.inference.kernels.tuner import GemmCase, graph_ms  # noqa: E402

RESIDENT = 4  # int4 tiles of 16 rows a multiprocessor holds: 128 registers x 128 threads (bench/gemm_sass.py)


def programs(case: GemmCase, config) -> int:
    columns = case.w.n // 2 if case.gated else case.w.n
    if case.ids is None:
        blocks = -(-case.rows // config.block_m)
    else:  # blocks that hold pairs (the rest exit at once): an expert's pairs in blocks of block_m
        counts = torch.bincount(case.ids.flatten().long(), minlength=case.num_experts)
        blocks = int((-(-counts // config.block_m)).sum())
    return -(-columns // config.block_n) * blocks * config.split_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1])
    parser.add_argument("--splits", type=int, nargs="+", default=list(range(1, 17)))
    parser.add_argument("--block_n", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--shapes", nargs="+", default=["moe_up", "moe_down", "qkv", "dense"])
    args = parser.parse_args()
    dev = torch.device("cuda")
    slots = RESIDENT * num_sms(dev)
    rows = []
    for tokens in args.tokens:
        for name in args.shapes:
            torch.manual_seed(0)
            case = GemmCase(*gemm_case_of(name, "int4", tokens, dev))
            for block_n in args.block_n:
                for split in args.splits:
                    config = replace(case.default, block_n=block_n, split_k=split)
                    if config.k_per_split(case.w.k) * (split - 1) >= case.w.k:
                        continue  # a split with no rows
                    n = programs(case, config)
                    us = graph_ms(config, case) * 1e3
                    rows.append({"shape": name, "tokens": tokens, "block_n": block_n, "split_k": split,
                                 "default": config == case.default, "programs": n, "waves": round(n / slots, 2),
                                 "us": round(us, 1), "gbs": round(case.bytes_read / us / 1e3, 1)})
                    print(json.dumps(rows[-1]), flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "slots": slots, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
