"""A probe (exploration, kept for its numbers): does a persistent int8 expert GEMM at a token or a few read
faster than gemm_kernel's grid of a program an item?

gemm_kernel (services/inference/kernels/gemm.py) at one token launches a program per (column tile, block of
pairs, K split), each a short K loop (int8 gate+up: 12 steps of 8 KB at 8 splits), its pipeline filled and
drained per program; the read-only walk of the same items made persistent read 7% faster
(bench/tile_read_probe.py, bench/results/tile_read_probe_persistent.json). Here `persistent_kernel` takes
gemm_kernel's int path for the experts (the same helpers: _block, _tile, _dot, _waited, _finish) with a few
programs a multiprocessor walking the live items (the blocks the routing filled, counted on the GPU) in one
flattened loop of K steps, the next item's first loads issued while the last's epilogue runs (Triton's
pipeliner sees one loop). Outputs: the K splits' partial sums as gemm() writes them, compared bit for bit.

    python bench/persistent_int8_probe.py OUT.json [--tokens 1 8] [--per_sm 1 2 3 4]    # on the GPU

Prints one JSON object last: per shape and token count, gemm()'s time at the engine's configuration and
the probe's at each programs-a-multiprocessor, tile width and split, with whether the outputs are equal.
"""
import argparse
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm_tune import gemm_case_of  # noqa: E402

from dbrx_serve.services.inference.kernels.device import num_sms, on_nvidia  # noqa: E402
from dbrx_serve.services.inference.kernels.gemm import (_block, _finish, _tile, _waited, packed_fits,  # noqa: E402
                                                         precision_of)
from dbrx_serve.services.inference.kernels.moe import align  # noqa: E402
from dbrx_serve.services.inference.kernels.tuner import GemmCase, replay_ms  # noqa: E402


@triton.jit
def persistent_kernel(x_ptr, w_ptr, scale_ptr, out_ptr, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr,
                      topk_weights_ptr, M, N, K, num_pairs, k_per_split, n_tiles, splits,
                      stride_xm, stride_we, stride_wk, stride_wn, stride_se, stride_sn,
                      stride_os, stride_om, gate_offset,
                      X_ROW_DIV: tl.constexpr, WEIGHTED: tl.constexpr, GATED: tl.constexpr, DEQ: tl.constexpr,
                      PTX: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      STEPS: tl.constexpr):
    """Items (column tile, K split, block) column tile first, program p taking items p, p + P, ...; each
    STEPS K steps of 64 rows (every split the same length: k_per_split = 64 STEPS), int8 tiles (FMT 1),
    x's K rows contiguous. Writes [splits, M, N] partial sums (gated: up's [.., :N], gate's [.., N:])."""
    pid, programs = tl.program_id(0), tl.num_programs(0)
    items = tl.cdiv(tl.load(num_sorted_ptr), BLOCK_M) * n_tiles * splits
    trips = tl.cdiv(tl.maximum(items - pid, 0), programs) * STEPS
    r = tl.arange(0, BLOCK_N // 64 * 8)  # rows of 512 bytes, 8 a tile (gemm_kernel's int8 pointers)
    within = (r % 8)[:, None] * 512 + tl.arange(0, 512)[None, :]
    offs_k = tl.arange(0, 64)
    DTYPE = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    gate = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    item, ki = pid - programs, -1
    # the item's values, set at its first step (placeholders of their types before)
    pid_n, pid_k, rows, row_ok, k_start = pid * 0, pid * 0, tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_M) < 0, pid * 0
    expert = (pid * 0).to(tl.int64)
    w_ptrs = w_ptr + r[:, None] * 0 + within
    x_ptrs = x_ptr + rows[None, :] * 0 + offs_k[:, None]
    w_ok = r[:, None] < 0
    for _ in range(0, trips):
        ki = tl.where(ki == STEPS - 1, 0, ki + 1)
        if ki == 0:
            item += programs
            pid_n = item % n_tiles
            pid_k = (item // n_tiles) % splits
            rows, row_ok, expert, k_start, _ = _block(item // (n_tiles * splits), pid_k, sorted_ids_ptr,
                                                      block_experts_ptr, num_sorted_ptr, M, K, num_pairs,
                                                      k_per_split, True, BLOCK_M)
            tile_rows = pid_n * (BLOCK_N // 64) + r // 8
            w_ptrs = (w_ptr + expert * stride_we + tile_rows[:, None] * stride_wn + (k_start // 64) * stride_wk
                      + within)
            w_ok = (tile_rows < tl.cdiv(N, 64))[:, None]
            x_ptrs = x_ptr + (rows // X_ROW_DIV)[None, :] * stride_xm + (k_start + offs_k)[:, None]
        k_ok = offs_k < K - (k_start + ki * 64)
        x = tl.load(x_ptrs + ki * 64, mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        acc = _waited(tl.dot(_tile(w_ptrs + ki * stride_wk, w_ok, 1, DEQ, DTYPE, BLOCK_N), x, acc,
                             input_precision=PRECISION), PTX)
        if GATED:
            g_ptrs = w_ptrs + tl.cdiv(gate_offset, 64) * stride_wn + ki * stride_wk
            gate = _waited(tl.dot(_tile(g_ptrs, w_ok, 1, DEQ, DTYPE, BLOCK_N), x, gate, input_precision=PRECISION),
                           PTX)
        if ki == STEPS - 1:
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            out_ptrs = out_ptr + pid_k * stride_os + rows[None, :] * stride_om
            _finish(acc, acc, cols, rows, row_ok, expert, scale_ptr, stride_se, stride_sn, 0, topk_weights_ptr,
                    out_ptrs, 1, N, False, False, False)  # bare partial sums, as gemm_kernel's (PARTIAL)
            if GATED:
                _finish(gate, gate, cols + N, rows, row_ok, expert, scale_ptr, stride_se, stride_sn, 0,
                        topk_weights_ptr, out_ptrs, 1, 2 * N, False, False, False)
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            gate = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)


def launcher(case: GemmCase, block_n: int, splits: int, programs: int, stages: int = 4):
    """The probe's launch for a case (int8 experts, block_m 16, K split in `splits`), and its output."""
    w, gated = case.w, case.gated
    k_per_split = -(-w.k // splits)
    if k_per_split % 64 or w.k % splits:
        raise ValueError(f"K {w.k} in {splits} splits of whole 64-row steps only")
    sorted_ids, block_experts, num_sorted = align(case.ids, case.num_experts, 0, 16)
    n_out = w.n // 2 if gated else w.n
    out = torch.empty(splits, case.rows, 2 * n_out if gated else n_out, dtype=torch.float32, device=case.x.device)
    e, n_tile, k_tile, _ = w.tensor.stride()
    deq = 3 if packed_fits(w) and case.x.dtype == torch.bfloat16 else 1

    def launch():
        persistent_kernel[(programs,)](
            case.x, w.tensor, w.scale, out, sorted_ids, block_experts, num_sorted, case.x, case.rows, n_out, w.k,
            case.rows, k_per_split, triton.cdiv(n_out, block_n), splits, case.x.stride(0), e, k_tile, n_tile,
            w.scale.stride(0), w.scale.stride(1), out.stride(0), out.stride(1), n_out if gated else 0,
            X_ROW_DIV=case.top_k if gated else 1, WEIGHTED=False, GATED=gated, DEQ=deq, PTX=on_nvidia(case.x),
            PRECISION=precision_of(case.x.dtype), BLOCK_M=16, BLOCK_N=block_n, STEPS=k_per_split // 64, num_warps=4, num_stages=stages)
        return out
    return launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--per_sm", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--block_n", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--splits", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    device = torch.device("cuda")
    sms = num_sms(device)
    results = []
    for shape, tokens in itertools.product(("moe_up", "moe_down"), args.tokens):
        case = GemmCase(*gemm_case_of(shape, "int8", tokens, device))
        row = {"shape": shape, "tokens": tokens, "default": case.default.to_dict(),
               "default_us": round(replay_ms(case.launch(case.default), 20) * 1e3, 1), "probe": []}
        for block_n, splits in itertools.product(args.block_n, args.splits):
            engine = case.launch(replace(case.default, block_m=16, block_n=block_n, split_k=splits))
            want = engine().clone()
            engine_us = replay_ms(engine, 20) * 1e3
            for per_sm in args.per_sm:
                launch = launcher(case, block_n, splits, per_sm * sms)
                got = launch().clone()
                row["probe"].append({"block_n": block_n, "splits": splits, "per_sm": per_sm,
                                     "us": round(replay_ms(launch, 20) * 1e3, 1), "engine_us": round(engine_us, 1),
                                     "equal": bool(torch.equal(got, want))})
                print(json.dumps({"shape": shape, "tokens": tokens, **row["probe"][-1]}), file=sys.stderr, flush=True)
        results.append(row)
    text = json.dumps({"device": torch.cuda.get_device_name(), "sms": sms, "cases": results})
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
