"""A probe of one GPU call (exploration, an upper bound): what gemm_kernel's epilogue and prologue loads cost.

After its K loop each program loads its columns' per-channel scales (and, for the down GEMM, its rows'
router weights) before it can store: a wait of a memory round trip in which the program holds its place
on the multiprocessor and asks for no weights. With a K split (every GEMM at batch 1) the scales can be
applied by the kernel that adds the splits up instead (what gemm.py does since for the experts' GEMMs:
bench/results/decode_split_scales_ab.json). This probe measured the most that can give: a copy
of services/inference/kernels/gemm.py with those loads taken out (outputs wrong: unscaled and unweighted;
the bytes of weights the same: copy `epilogue`). Likewise an expert GEMM's program loads its block's
expert (written by the routing) before it can ask for a weight; copy `prologue` takes it from the block's
index instead (at one token the four blocks are four experts, as many bytes; values wrong), `both` makes
both cuts. Timed

1. alone: each GEMM of DBRX's shapes at 1 and 8 tokens (1 with `prologue`; bench/gemm_tune.py's cases, a
   CUDA graph of 20 launches), the engine's kernel and the copies', interleaved;
2. in the step: bench/decode.py in turn with the engine's kernel and each copy's, twice.

    python bench/epilogue_loads_probe.py OUT_DIR --precision int8 int4 --batch 1
    python bench/epilogue_loads_probe.py OUT_DIR --precision int8 --batch 1 --copies epilogue prologue both

Writes OUT_DIR/epilogue_loads_probe.json.
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(__file__))
import decode  # noqa: E402
from gemm_tune import gemm_case_of  # noqa: E402

import dbrx_serve.services.inference.kernels.gemm as engine_gemm  # noqa: E402
import dbrx_serve.services.inference.kernels.moe as moe  # noqa: E402
import dbrx_serve.services.inference.kernels.tuner as tuner  # noqa: E402

PACKAGE = "dbrx_serve.services.inference.kernels"
IMPORTS = {"from .": f"from {PACKAGE}."}
CUTS = {  # a copy's name -> the engine's text -> the copy's
    "epilogue": {  # no scales, no router weights after the K loop
        "SCALED: tl.constexpr = FMT != 0 and GROUP == 0": "SCALED: tl.constexpr = False",
        "    if WEIGHTED:\n        acc *= tl.load(topk_weights_ptr":
            "    if False:\n        acc *= tl.load(topk_weights_ptr"},
    "prologue": {  # an expert block's expert from its index (one token: the 4 blocks, every block routed)
        "expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)": "expert = (pid_m % 4).to(tl.int64)",
        "if pid_m * BLOCK_M >= tl.load(num_sorted_ptr):": "if False:"},
}
CUTS["both"] = {**CUTS["epilogue"], **CUTS["prologue"]}


def copy(directory: str, name: str):
    """gemm.py copied to a file of its own with CUTS[name] made (each must be found), imported."""
    text = Path(engine_gemm.__file__).read_text()
    for old, new in {**CUTS[name], **IMPORTS}.items():
        if old not in text:
            raise SystemExit(f"gemm.py changed: {old!r} not found")
        text = text.replace(old, new)
    path = Path(directory) / f"gemm_{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"gemm_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use(module) -> None:
    """Every caller of gemm() in the engine and the tuner's cases launch module's."""
    engine_gemm.gemm = moe.gemm = tuner.gemm = module.gemm


def alone(precisions: list[str], variants: dict, device) -> list[dict]:
    rows = []
    for precision in precisions:
        for shape in ("qkv", "dense", "moe_up", "moe_down"):
            for tokens in (1, 8) if "prologue" not in variants else (1,):
                case = tuner.GemmCase(*gemm_case_of(shape, precision, tokens, device))
                row = {"precision": precision, "shape": shape, "tokens": tokens, "config": case.default.to_dict()}
                for name in list(variants) * 2:  # twice each, interleaved
                    use(variants[name])
                    row.setdefault(name, []).append(round(tuner.replay_ms(case.launch(case.default), 20) * 1e3, 1))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--precision", nargs="+", default=["int8", "int4"])
    parser.add_argument("--batch", nargs="+", default=["1"])
    parser.add_argument("--layers", default="40")
    parser.add_argument("--copies", nargs="+", default=["epilogue"], choices=list(CUTS),
                        help="prologue and both: batch 1 only (every block routed, four experts)")
    args = parser.parse_args()
    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as directory:
        # the engine's gemm() as it is, before use() replaces it, and the copies'
        variants = {"engine": SimpleNamespace(gemm=engine_gemm.gemm), **{c: copy(directory, c) for c in args.copies}}
        result = {"gpu": torch.cuda.get_device_name(), "alone": alone(args.precision, variants, device), "runs": []}
        for precision in args.precision:
            for i, name in enumerate(list(variants) * 2):
                use(variants[name])
                rows = decode.decode_rows(os.path.join(directory, f"decode_{precision}_{i}.json"), precision,
                                          args.batch, args.layers)
                result["runs"].append({"precision": precision, "kernel": name, "decode": rows})
                print(json.dumps(result["runs"][-1]), flush=True)
        use(variants["engine"])
    with open(os.path.join(args.out_dir, "epilogue_loads_probe.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
