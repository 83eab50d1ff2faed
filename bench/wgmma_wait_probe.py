"""A probe of one GPU call (exploration, kept for its numbers): what a wgmma left in flight across K
steps would buy the int4 GEMMs. gemm_kernel waits for each step's wgmma (gemm.py `_waited`: Triton 3.6
otherwise lets the next step's conversion overwrite the registers the wgmma still reads,
triton-lang/triton#9433). Run it once as the code stands (`--save REF.pt`: the outputs, right), then
with `_waited` made a no-op in a copy of gemm.py (`--reference REF.pt`): the time of the racy kernel
bounds what an in-flight wgmma gains, and its error against the saved outputs shows the race.

    python bench/wgmma_wait_probe.py OUT.json --save REF.pt
    python bench/wgmma_wait_probe.py OUT.json --reference REF.pt

Writes OUT.json: per shape and tokens, the default configuration, us (CUDA-graph replay, median),
GB/s of the weights it reads, and (with --reference) the largest error relative to the output's scale.
"""
import argparse
import json
import sys
from dataclasses import replace

import torch

sys.path.insert(0, "bench")
from gemm_tune import gemm_case_of  # noqa: E402

from dbrx_serve.services.inference.kernels.tuner import GemmCase, graph_ms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--save", help="save each case's output here (the right sums)")
    parser.add_argument("--reference", help="compare each case's output with these")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--stages", type=int, nargs="+", default=[0], help="0: the default's")
    args = parser.parse_args()
    dev = torch.device("cuda")
    reference = torch.load(args.reference, weights_only=True) if args.reference else {}
    saved, rows = {}, []
    for tokens in args.tokens:
        for name in ("moe_up", "moe_down", "qkv", "dense"):
            torch.manual_seed(0)
            case = GemmCase(*gemm_case_of(name, "int4", tokens, dev))
            for stages in args.stages:
                config = replace(case.default, num_stages=stages or case.default.num_stages)
                key = f"{name}_{tokens}_{config.num_stages}"
                launch = case.launch(config)
                out = launch().float().clone()
                saved[key] = out.cpu()
                row = {"shape": name, "tokens": tokens, "config": config.to_dict(),
                       "us": round(graph_ms(config, case) * 1e3, 1)}
                row["gbs"] = round(case.bytes_read / row["us"] / 1e3, 1)
                if key in reference:
                    ref = reference[key].to(dev)
                    row["max_error"] = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.save:
        torch.save(saved, args.save)
    result = {"gpu": torch.cuda.get_device_name(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
