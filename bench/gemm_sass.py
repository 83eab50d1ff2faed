"""Compile the GEMM kernel for Hopper (sm_90) on a machine without a GPU and report,
per launch configuration, registers, spilled bytes, the size of its machine code and its
tensor-core instructions (Hopper's wgmma, HGMMA, or the older mma.sync, HMMA), its waits for
wgmma groups, the instructions of its K loop and its shared memory.

    python bench/gemm_sass.py --precision int4 --gated --block_m 16 32 --block_n 64 128 --dequant 1 3
    python bench/gemm_sass.py --precision int8 --gated --block_m 16 --block_n 128 --dequant 1 3

Uses the ptxas and cuobjdump that Triton's wheel carries. The kernel is specialized
as the runtime specializes it (strides of 1 as constants, pointers and sizes
divisible by 16), so what it reports is what runs. Spills (STACK > 0, LDL/STL
instructions) and code that grows with the tile are the first things to rule out
before spending GPU time on a configuration. Prints one JSON object last.
"""

import argparse
import itertools
import json
import os
import subprocess
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, even where tests interpret

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from dbrx_serve.services.inference.kernels.gemm import FLOAT, FORMATS, gemm_kernel  # noqa: E402

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
POINTERS = {"x_ptr": "*bf16", "scale_ptr": "*bf16", "out_ptr": "*bf16", "sorted_ids_ptr": "*i32",
            "block_experts_ptr": "*i32", "num_sorted_ptr": "*i32", "topk_weights_ptr": "*fp32"}
INTS = ("M", "N", "K", "num_pairs", "k_per_split", "stride_xm", "stride_xk", "stride_we", "stride_wk", "stride_wn",
        "stride_se", "stride_sg", "stride_sn", "stride_os", "stride_om", "stride_on", "gate_offset")


def source(fmt: int, gated: bool, dequant: int, block_m: int, block_n: int, block_k: int, group: int) -> ASTSource:
    """gemm_kernel as gemm() launches it (an unsplit launch: the epilogue that scales; the K loop, which this
    reports, is the same for a K split's bare partial sums)."""
    signature = {**POINTERS, "w_ptr": "*bf16" if fmt == FLOAT else "*i8", **{name: "i32" for name in INTS}}
    signature["stride_we"] = "i64"
    constants = {"MOE": True, "X_ROW_DIV": 4 if gated else 1, "WEIGHTED": not gated, "GATED": gated, "PARTIAL": False,
                 "BLOCK_N": block_n, "BLOCK_K": block_k, "PDL": True, "FMT": fmt, "DEQ": dequant if fmt != FLOAT else 0,
                 "PRECISION": None, "BLOCK_M": block_m, "PTX": True, "GROUP": group}
    weight_unit = ("stride_wk",) if fmt == FLOAT else ()  # int: strides of whole tiles
    unit = ("stride_xk", "stride_sn", "stride_on", *weight_unit)
    constants.update({name: 1 for name in unit})  # the runtime specializes arguments equal to 1
    signature.update({name: "constexpr" for name in constants})
    index = gemm_kernel.arg_names.index
    divisible = [n for n, t in signature.items() if t.startswith("*") or (t in ("i32", "i64") and n not in ("M", "num_pairs"))]
    return ASTSource(fn=gemm_kernel, signature=signature, constexprs={(index(n),): v for n, v in constants.items()},
                     attrs={(index(n),): [["tt.divisibility", 16]] for n in divisible})


def report(src: ASTSource, num_warps: int, num_stages: int, **options) -> dict:
    """Compile src for sm_90 (options: Triton's, e.g. maxnreg) and report its code."""
    options = {"num_warps": num_warps, "num_stages": num_stages, **options}
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        Path(cubin.name).write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([TOOLS / "cuobjdump", "-res-usage", cubin.name], capture_output=True, text=True).stdout
        sass = subprocess.run([TOOLS / "cuobjdump", "-sass", cubin.name], capture_output=True, text=True).stdout
    code = [(int(line.split("*/")[0].split("/*")[1], 16), line.split("*/")[1].split(";")[0].split())
            for line in sass.splitlines() if line.strip().startswith("/*") and "*/" in line
            and len(line.split("*/")[1].split()) > 0]
    code = [(address, words[1:] if words[0].startswith("@") else words) for address, words in code]  # predicates
    instructions = [words[0] for _, words in code]
    return {"registers": int(usage.split("REG:")[1].split()[0]), "stack_bytes": int(usage.split("STACK:")[1].split()[0]),
            "shared_bytes": kernel.metadata.shared, "instructions": len(instructions),
            "loop_instructions": loop_length(code),
            "spill_instructions": sum(i.startswith(("LDL", "STL")) for i in instructions),
            "wgmma": sum(i.startswith("HGMMA") for i in instructions), "mma_sync": sum(i.startswith("HMMA") for i in instructions),
            "wgmma_waits": wgmma_waits(code)}


def wgmma_waits(code: list[tuple[int, list[str]]]) -> dict[str, int]:
    """The kernel's waits for its wgmma groups by the groups they leave in flight (`WARPGROUP.DEPBAR.LE
    gsb0, 0xN`: N): 0x0 waits for all of them."""
    waits = [words[-1] for _, words in code if words[0] == "WARPGROUP.DEPBAR.LE"]
    return {n: waits.count(n) for n in sorted(set(waits))}


def loop_length(code: list[tuple[int, list[str]]]) -> int:
    """Instructions a thread issues per trip of the longest loop (the K loop): from a backward branch's
    target to the branch. code: (address, [opcode, operands..]) in order."""
    longest = 0
    for address, words in code:
        if words[0] == "BRA" and words[-1].startswith("0x") and int(words[-1], 16) < address:
            longest = max(longest, sum(int(words[-1], 16) <= a <= address for a, _ in code))
    return longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="int4", choices=["bf16", "int8", "int4"])
    parser.add_argument("--gated", action="store_true", help="the experts' gate+up GEMM (else down)")
    parser.add_argument("--block_m", type=int, nargs="+", default=[16])
    parser.add_argument("--block_n", type=int, nargs="+", default=[64])
    parser.add_argument("--block_k", type=int, nargs="+", default=[64], help="int8, int4: 64 (their tiles)")
    parser.add_argument("--dequant", type=int, nargs="+", default=[3])
    parser.add_argument("--num_warps", type=int, nargs="+", default=[4])
    parser.add_argument("--num_stages", type=int, nargs="+", default=[4])
    parser.add_argument("--group_size", type=int, default=0, help="group-wise int4 (0: per channel)")
    args = parser.parse_args()
    fmt = FORMATS.get(args.precision, FLOAT)
    rows = []
    for bm, bn, bk, deq, warps, stages in itertools.product(args.block_m, args.block_n, args.block_k, args.dequant,
                                                            args.num_warps, args.num_stages):
        config = {"block_m": bm, "block_n": bn, "block_k": bk, "dequant": deq, "num_warps": warps,
                  "num_stages": stages}
        try:
            src = source(fmt, args.gated, deq, bm, bn, bk, args.group_size)
            rows.append({**config, **report(src, warps, stages)})
        except Exception as error:  # a configuration that does not compile: say so and go on
            rows.append({**config, "error": str(error).splitlines()[-1][:200]})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"precision": args.precision, "gated": args.gated, "group_size": args.group_size,
                      "configs": rows}))


if __name__ == "__main__":
    main()
