"""A probe (exploration, kept for its numbers): the experts' int4 (or int8) GEMM warp-specialized, written in
Gluon (Triton's lower-level language, in the same Triton), against gemm_kernel
(services/inference/kernels/gemm.py) on the same inputs.

gemm_kernel's warps both load and convert: each K step they issue the next tiles' copies, wait for this
tile, convert its nibbles and wait for its wgmma. Here one producer warp streams the weight tiles in by TMA
(and the step's token rows by cp.async) into a ring of STAGES buffers, and the program's other warps, a
warpgroup, only convert and multiply, each waiting on an mbarrier for its buffer. Same tiles
(shared/tiles.py), same conversion (gemm.py's NIBBLES_TO_BF16; int8: BYTES_TO_BF16), same work items as gemm_kernel's
grid, same outputs (K-split partial sums as gemm() writes them). A program takes one item (per_sm 0) or
is persistent (per_sm programs a multiprocessor, each looping over items; the producer runs on into the
next item while the warpgroup finishes one). VARIANTS: ring depth, register budget (maxnreg for the
program, worker_regs for the producer warp), programs a multiprocessor.

    python bench/ws_gemm_probe.py --sass                 # compile for sm_90 here (no GPU): registers, code
    python bench/ws_gemm_probe.py OUT.json --tokens 1 8 64  # on the GPU: time and error against gemm_kernel
        [--precision int8]  # int8 tiles (4,096 bytes, converted by BYTES_TO_BF16); int4 by default
        [--no-convert]  # also the conversion left out (wrong values): what a free conversion would buy
        [--block_m8]    # also 8 rows a tile (wgmma 64x8x16) where the default has 16

Prints one JSON object last. Results: bench/results/gemm_int4_ws_probe*.json and gemm_int8_ws_probe.json
(README, "Measured and not kept").
"""
import argparse
import json
import os
import sys
from dataclasses import replace

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (async_copy, fence_async_shared, mbarrier, tma,
                                                              warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from dbrx_serve.services.inference.kernels.device import num_sms
from dbrx_serve.services.inference.kernels.gemm import BYTES_TO_BF16, NIBBLES_TO_BF16

# a 64 x 64 tile as TMA takes it (at most 256 bytes a dimension): int4's 2,048 bytes, int8's 4,096
BOX = {"int4": [8, 256], "int8": [16, 256]}
# COPY: a word's four registers are the word itself (values wrong): with it the warpgroup does all but the
# conversion, which bounds what a cheaper conversion could gain (--no-convert); COPY8 the same for int8
COPY = gl.constexpr("mov.b32 $0, $4; mov.b32 $1, $4; mov.b32 $2, $4; mov.b32 $3, $4;")
COPY8 = gl.constexpr("mov.b32 $0, $2; mov.b32 $1, $2;")


@gluon.jit
def _item(item, grid_n, grid_m, num_sorted, K, k_per_split, BLOCK_M: gl.constexpr):
    """Work item -> (pid_n, pid_m, pid_k) as gemm_kernel's grid numbers them, its first K row and its K steps
    (none for a block past the routing)."""
    pid_n = item % grid_n
    pid_m = (item // grid_n) % grid_m
    pid_k = item // (grid_n * grid_m)
    k_start = pid_k * k_per_split
    steps = gl.cdiv(gl.minimum(k_start + k_per_split, K) - k_start, 64)
    if pid_m * BLOCK_M >= num_sorted:
        steps = 0
    return pid_n, pid_m, k_start, steps


@gluon.jit
def _producer(w_desc, x_ptr, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, w_bufs, x_bufs, ready, empty,
              K, k_per_split, num_pairs, stride_xm, tiles_per_expert, gate_tiles, grid_n, grid_m, items,
              X_ROW_DIV: gl.constexpr, GATED: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """One warp: for each K step of each of the program's items, wait for the ring's next buffer to be
    free, copy the token rows (cp.async, gathered) and the weight tiles (TMA) in, both completing its
    `ready` barrier. It runs ahead of the warpgroup by up to STAGES steps, across items."""
    STAGES: gl.constexpr = x_bufs.shape[0]
    XL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0])  # 16 bytes a lane, 4 rows an instruction
    cols = gl.arange(0, 64, layout=gl.SliceLayout(0, XL))
    nbytes: gl.constexpr = (2 if GATED else 1) * w_desc.block_type.nbytes
    num_sorted = gl.load(num_sorted_ptr)
    it = 0
    for item in range(gl.program_id(0), items, gl.num_programs(0)):
        pid_n, pid_m, k_start, steps = _item(item, grid_n, grid_m, num_sorted, K, k_per_split, BLOCK_M)
        rows = gl.load(sorted_ids_ptr + pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, XL)))
        row_ok = rows < num_pairs
        x_rows = x_ptr + (rows // X_ROW_DIV).to(gl.int64)[:, None] * stride_xm
        tile_row = gl.load(block_experts_ptr + pid_m) * tiles_per_expert + pid_n * (BLOCK_N // 64)
        TILE_ROWS: gl.constexpr = w_desc.block_type.shape[1]  # TMA rows a tile: 8 (int4) or 16 (int8)
        for i in range(steps):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            k = k_start + i * 64
            # the rows first: their arrivals hold the barrier until they land, whatever the TMA's timing
            async_copy.async_copy_global_to_shared(x_bufs.index(s), x_rows + (k + cols)[None, :],
                                                   mask=row_ok[:, None] & ((k + cols) < K)[None, :])
            async_copy.mbarrier_arrive(ready.index(s))
            mbarrier.expect(ready.index(s), nbytes)
            tma.async_copy_global_to_shared(w_desc, [tile_row, k // 64 * TILE_ROWS, 0], ready.index(s),
                                            w_bufs.index(2 * s))
            if GATED:
                tma.async_copy_global_to_shared(w_desc, [tile_row + gate_tiles, k // 64 * TILE_ROWS, 0],
                                                ready.index(s), w_bufs.index(2 * s + 1))
            it += 1


@gluon.jit
def _tile(buf, A: gl.constexpr, BLOCK_N: gl.constexpr, CONVERT: gl.constexpr, INT8: gl.constexpr):
    """A [BLOCK_N, 64] bfloat16 weight tile in wgmma's register layout from its bytes in shared memory: a
    lane's 16 bytes, converted (gemm.py's _tile: int4 four rows of 512 bytes a tile, int8 eight)."""
    WORDS: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [4, 1], [1, 0])
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    if INT8:
        packed = buf._reinterpret(gl.int8, [BLOCK_N // 8, 512], flat).load(WORDS)
        v = gl.inline_asm_elementwise(BYTES_TO_BF16 if CONVERT else COPY8, "=r,=r,r", [packed], dtype=gl.bfloat16,
                                      is_pure=True, pack=4)
        v = gl.reshape(v, (BLOCK_N // 64, 2, 4, 8, 4, 4, 2, 2))  # tile c w g t (s' j) h e
        v = gl.permute(v, (0, 2, 6, 3, 1, 5, 4, 7))  # rows (tile, w, h, g), columns (c, s' j, t, e)
    else:
        packed = buf._reinterpret(gl.int8, [BLOCK_N // 16, 512], flat).load(WORDS)
        j0, j1 = gl.inline_asm_elementwise(NIBBLES_TO_BF16 if CONVERT else COPY, "=r,=r,=r,=r,r", [packed],
                                           dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=4)
        v = gl.reshape(gl.join(j0, j1), (BLOCK_N // 64, 4, 8, 4, 4, 2, 2, 2))  # tile w g t s h e j
        v = gl.permute(v, (0, 1, 5, 2, 4, 7, 3, 6))  # rows (tile, w, h, g), columns (s, j, t, e)
    return gl.convert_layout(gl.reshape(v, (BLOCK_N, 64)), A, assert_trivial=True)


@gluon.jit
def _epilogue_inputs(pid_n, pid_m, live, scale_ptr, sorted_ids_ptr, block_experts_ptr, topk_weights_ptr, N,
                     num_pairs, stride_se, WEIGHTED: gl.constexpr, GATED: gl.constexpr, BLOCK_M: gl.constexpr,
                     BLOCK_N: gl.constexpr, MMA: gl.constexpr):
    """What an item's epilogue reads, loaded before its K loop (their latency then hides behind it): its
    rows, columns, per-channel scales (up's, gate's) and router weights."""
    cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA))
    rows = gl.load(sorted_ids_ptr + pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, MMA)))
    row_ok = (rows < num_pairs) & live
    n_ok = (cols < N) & live
    s_ptrs = scale_ptr + gl.load(block_experts_ptr + pid_m).to(gl.int64) * stride_se + cols
    s_up = gl.load(s_ptrs, mask=n_ok, other=0.0).to(gl.float32)
    s_gate = s_up
    if GATED:
        s_gate = gl.load(s_ptrs + N, mask=n_ok, other=0.0).to(gl.float32)
    weights = gl.full([BLOCK_M], 1.0, gl.float32, gl.SliceLayout(0, MMA))
    if WEIGHTED:
        weights = gl.load(topk_weights_ptr + rows, mask=row_ok, other=0.0)
    return cols, rows, n_ok[:, None] & row_ok[None, :], s_up, s_gate, weights


@gluon.jit
def _finish(acc, gate, cols, rows, mask, s_up, s_gate, weights, out_ptr, pid_k, N, stride_os, stride_om, split,
            GATED: gl.constexpr):
    """gemm.py's _finish: per-channel scales, SwiGLU, router weights, or the split's bare partial sums; store."""
    out_ptrs = out_ptr + pid_k * stride_os + rows[None, :] * stride_om + cols[:, None]
    if split == 1:
        acc *= s_up[:, None] * weights[None, :]
        gate *= s_gate[:, None] * weights[None, :]
    if GATED:
        if split > 1:  # partial sums of up [.., :N] and gate [.., N:]
            gl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
            gl.store(out_ptrs + N, gate.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            gl.store(out_ptrs, (acc * (gate / (1.0 + gl.exp(-gate)))).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        gl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@gluon.jit
def _consumer(w_bufs, x_bufs, ready, empty, scale_ptr, out_ptr, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr,
              topk_weights_ptr, N, K, num_pairs, k_per_split, stride_se, stride_os, stride_om, grid_n, grid_m, items,
              WEIGHTED: gl.constexpr, GATED: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              MMA: gl.constexpr, CONVERT: gl.constexpr, INT8: gl.constexpr):
    """The warpgroup: for each K step of each item, wait for the buffer, convert the weights, multiply,
    free the buffer; then the item's epilogue."""
    STAGES: gl.constexpr = x_bufs.shape[0]
    A: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    split = items // (grid_n * grid_m)
    num_sorted = gl.load(num_sorted_ptr)
    it = 0
    for item in range(gl.program_id(0), items, gl.num_programs(0)):
        pid_n, pid_m, k_start, steps = _item(item, grid_n, grid_m, num_sorted, K, k_per_split, BLOCK_M)
        cols, rows, mask, s_up, s_gate, weights = _epilogue_inputs(
            pid_n, pid_m, steps > 0, scale_ptr, sorted_ids_ptr, block_experts_ptr, topk_weights_ptr, N, num_pairs,
            stride_se, WEIGHTED, GATED, BLOCK_M, BLOCK_N, MMA)
        acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA)
        gate = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA)
        for i in range(steps):
            s = it % STAGES
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            fence_async_shared()  # the rows came by cp.async; wgmma reads them through the async proxy
            x = x_bufs.index(s).permute((1, 0))
            up = _tile(w_bufs.index(2 * s), A, BLOCK_N, CONVERT, INT8)
            acc = warpgroup_mma(up, x, acc, is_async=True)
            if GATED:
                g = _tile(w_bufs.index(2 * s + 1), A, BLOCK_N, CONVERT, INT8)
                gate = warpgroup_mma(g, x, gate, is_async=True)
                acc, gate, up, g = warpgroup_mma_wait(0, deps=[acc, gate, up, g])  # up, g: kept until read
            else:
                acc, up = warpgroup_mma_wait(0, deps=[acc, up])
            mbarrier.arrive(empty.index(s), count=1)
            it += 1
        if steps > 0:
            _finish(acc, gate, cols, rows, mask, s_up, s_gate, weights, out_ptr, item // (grid_n * grid_m), N,
                    stride_os, stride_om, split, GATED)


@gluon.jit
def ws_gemm_kernel(x_ptr, w_desc, scale_ptr, out_ptr, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr,
                   topk_weights_ptr, N, K, num_pairs, k_per_split, stride_xm, stride_se, stride_os, stride_om,
                   tiles_per_expert, gate_tiles, grid_n, grid_m, items,
                   X_ROW_DIV: gl.constexpr, WEIGHTED: gl.constexpr, GATED: gl.constexpr, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, STAGES: gl.constexpr, WORKER_REGS: gl.constexpr, CONVERT: gl.constexpr,
                   INT8: gl.constexpr):
    """gemm_kernel's expert GEMM (MOE, int4 or INT8 tiles, per-channel scales) over the items of its grid (grid_n x
    grid_m x split), a program taking items pid, pid + programs, ..., in two partitions."""
    gl.static_assert(BLOCK_N % 64 == 0)
    w_bufs = gl.allocate_shared_memory(gl.int8, [2 * STAGES] + w_desc.block_type.shape, w_desc.layout)
    x_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    x_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, 64], x_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    MMA: gl.constexpr = gl.NVMMADistributedLayout([3, 0], [4, 1], [16, BLOCK_M, 16])
    gl.warp_specialize([
        (_consumer, (w_bufs, x_bufs, ready, empty, scale_ptr, out_ptr, sorted_ids_ptr, block_experts_ptr,
                     num_sorted_ptr, topk_weights_ptr, N, K, num_pairs, k_per_split, stride_se, stride_os, stride_om,
                     grid_n, grid_m, items, WEIGHTED, GATED, BLOCK_M, BLOCK_N, MMA, CONVERT, INT8)),
        (_producer, (w_desc, x_ptr, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, w_bufs, x_bufs, ready, empty,
                     K, k_per_split, num_pairs, stride_xm, tiles_per_expert, gate_tiles, grid_n, grid_m, items,
                     X_ROW_DIV, GATED, BLOCK_M, BLOCK_N)),
    ], [1], [WORKER_REGS])


def weight_descriptor(tiles: torch.Tensor, block_n: int) -> TensorDescriptor:
    """The int4 tiles [E, N'/64, K'/64, 2048] (int8: 4096) as TMA reads them: [E * N'/64, K'/64 * 8 (16), 256],
    a box of block_n / 64 tiles' rows and one K tile."""
    e, nt, kt, tile_bytes = tiles.shape
    box = BOX["int8" if tile_bytes == 4096 else "int4"]
    view = tiles.view(e * nt, kt * box[0], box[1])
    layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=3)
    return TensorDescriptor.from_tensor(view, [block_n // 64, *box], layout)


def ws_gemm(x, w, out, config, moe, x_row_div=1, topk_weights=None, gated=False, stages=4, maxnreg=None,
            worker_regs=40, per_sm=0, convert=True):
    """gemm()'s experts GEMM through ws_gemm_kernel (int4 or int8 tiles, per-channel scales; config's block_m,
    block_n, split_k)."""
    sorted_ids, block_experts, num_sorted, num_pairs = moe
    n_out = w.n // 2 if gated else w.n
    out3 = out if out.dim() == 3 else out[None]
    e, nt = w.tensor.shape[:2]
    grid_n, grid_m = triton.cdiv(n_out, config.block_n), sorted_ids.shape[0] // config.block_m
    items = grid_n * grid_m * config.split_k
    programs = min(items, per_sm * num_sms(x.device)) if per_sm else items
    ws_gemm_kernel[(programs,)](
        x, weight_descriptor(w.tensor, config.block_n), w.scale, out3, sorted_ids, block_experts, num_sorted,
        topk_weights if topk_weights is not None else x, n_out, w.k, num_pairs, config.k_per_split(w.k), x.stride(0),
        w.scale.stride(0), out3.stride(0), out3.stride(1), nt, nt // 2 if gated else 0, grid_n, grid_m, items,
        X_ROW_DIV=x_row_div, WEIGHTED=topk_weights is not None, GATED=gated, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, STAGES=stages, WORKER_REGS=worker_regs, CONVERT=convert,
        INT8=w.tensor.shape[-1] == 4096, num_warps=4, maxnreg=maxnreg)
    return out


def source(gated: bool, block_m: int, block_n: int, stages: int, worker_regs: int = 40, int8: bool = False):
    """ws_gemm_kernel as the runtime specializes it for DBRX's gate+up (gated) or down GEMM, for
    compiling without a GPU (bench/gemm_sass.py's report)."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    tiles = torch.zeros(1, 2, 1, 4096 if int8 else 2048, dtype=torch.int8)  # any: its dtype and box count
    pointers = {"x_ptr": "*bf16", "scale_ptr": "*bf16", "out_ptr": "*fp32" if gated else "*bf16",
                "sorted_ids_ptr": "*i32", "block_experts_ptr": "*i32", "num_sorted_ptr": "*i32",
                "topk_weights_ptr": "*fp32"}
    ints = ("N", "K", "num_pairs", "k_per_split", "stride_xm", "stride_se", "stride_os", "stride_om",
            "tiles_per_expert", "gate_tiles", "grid_n", "grid_m", "items")
    constants = {"X_ROW_DIV": 4 if gated else 1, "WEIGHTED": not gated, "GATED": gated, "BLOCK_M": block_m,
                 "BLOCK_N": block_n, "STAGES": stages, "WORKER_REGS": worker_regs, "CONVERT": True, "INT8": int8}
    signature = {**pointers, "w_desc": mangle_type(weight_descriptor(tiles, block_n)),
                 **{name: "i32" for name in ints}, **{name: "constexpr" for name in constants}}
    signature = {name: signature[name] for name in ws_gemm_kernel.arg_names}
    index = ws_gemm_kernel.arg_names.index
    multiples = ("N", "K", "k_per_split", "stride_xm", "stride_se", "stride_os", "stride_om")  # of 16 at DBRX's sizes
    divisible = [n for n, t in signature.items() if t.startswith("*") or n in multiples]
    return GluonASTSource(fn=ws_gemm_kernel, signature=signature,
                          constexprs={(index(n),): v for n, v in constants.items()},
                          attrs={(index(n),): [["tt.divisibility", 16]] for n in divisible})


def sass(args) -> list[dict]:
    sys.path.insert(0, os.path.dirname(__file__))
    from gemm_sass import report

    rows = []
    int8 = args.precision == "int8"
    for gated in (True, False):
        block_n = 64 if int8 and gated else 128  # the engine's defaults (gemm.py's moe_config)
        for variant in VARIANTS:
            row = {"precision": args.precision, "gated": gated, "block_m": 16, "block_n": block_n, **variant}
            try:
                src = source(gated, 16, block_n, variant["stages"], variant["worker_regs"], int8)
                row.update(report(src, 4, 1, **({"maxnreg": variant["maxnreg"]} if variant["maxnreg"] else {})))
            except Exception as error:
                row["error"] = str(error)[-2000:]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# stages x 10 KB of shared memory a program (at 16 rows), per_sm programs a multiprocessor: within its 227 KB
VARIANTS = [dict(stages=4, maxnreg=80, worker_regs=32, per_sm=0),  # a program an item, as gemm_kernel
            dict(stages=4, maxnreg=80, worker_regs=32, per_sm=3),
            dict(stages=6, maxnreg=80, worker_regs=32, per_sm=3),
            dict(stages=8, maxnreg=128, worker_regs=40, per_sm=2),
            dict(stages=10, maxnreg=128, worker_regs=40, per_sm=2)]


def compare(args) -> list[dict]:
    """Per expert GEMM and tokens: gemm_kernel's default configuration, then each variant of ws_gemm_kernel
    on the same inputs and sorted pairs: us, GB/s of the weights read, error against gemm_kernel's output."""
    sys.path.insert(0, os.path.dirname(__file__))
    from gemm_tune import gemm_case_of

    from dbrx_serve.services.inference.kernels.gemm import gemm, out_columns
    from dbrx_serve.services.inference.kernels.moe import align
    from dbrx_serve.services.inference.kernels.tuner import GemmCase, replay_ms

    rows = []
    for tokens in args.tokens:
        for name in ("moe_up", "moe_down"):
            torch.manual_seed(0)
            case = GemmCase(*gemm_case_of(name, args.precision, tokens, torch.device("cuda")))
            config = case.default
            split = config.split_k > 1
            moe = (*align(case.ids, case.num_experts, 0, config.block_m), case.rows)
            kwargs = dict(x_row_div=case.top_k if case.gated else 1, gated=case.gated)

            def output():
                out = torch.empty(config.split_k, case.rows, out_columns(case.w, config, case.gated),
                                  dtype=torch.float32 if split else case.x.dtype, device=case.x.device)
                return out if split else out[0]

            ref, got = output(), output()
            base = {"precision": args.precision, "shape": name, "tokens": tokens, "config": config.to_dict()}
            us = replay_ms(lambda: gemm(case.x, case.w, ref, config, moe=moe, **kwargs)) * 1e3
            rows.append({**base, "kernel": "gemm_kernel", "us": round(us, 1),
                         "gbs": round(case.bytes_read / us / 1e3, 1)})
            print(json.dumps(rows[-1]), flush=True)
            variants = [("ws_gemm_kernel", config, v) for v in VARIANTS]
            if args.no_convert:
                variants.append(("ws_gemm_kernel", config, dict(VARIANTS[1], convert=False)))
            if args.block_m8 and config.block_m == 16:  # 8 rows a tile: wgmma 64x8x16 here, mma.sync in Triton
                eight = replace(config, block_m=8)
                variants += [("gemm_kernel", eight, {}), ("ws_gemm_kernel", eight, VARIANTS[1])]
            for kernel, cfg, variant in variants:
                row = {**base, "kernel": kernel, "block_m": cfg.block_m, **variant}
                pairs = moe if cfg.block_m == config.block_m else (*align(case.ids, case.num_experts, 0, 8), case.rows)
                try:
                    got.zero_()
                    if kernel == "gemm_kernel":
                        us = replay_ms(lambda: gemm(case.x, case.w, got, cfg, moe=pairs, **kwargs)) * 1e3
                    else:
                        us = replay_ms(lambda: ws_gemm(case.x, case.w, got, cfg, pairs, **kwargs, **variant)) * 1e3
                    row.update(us=round(us, 1), gbs=round(case.bytes_read / us / 1e3, 1))
                    if variant.get("convert", True):  # COPY's outputs mean nothing
                        scale = ref.float().abs().max().clamp_min(1e-30)
                        row["max_error"] = float((got.float() - ref.float()).abs().max() / scale)
                except Exception as error:  # a variant that does not compile or launch: say so, go on
                    row["error"] = f"{type(error).__name__}: {str(error)[-500:]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("--sass", action="store_true", help="compile for sm_90 here and report the code")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--precision", choices=["int4", "int8"], default="int4")
    parser.add_argument("--no-convert", action="store_true",
                        help="also time the best variant with the conversion left out (COPY; its outputs wrong)")
    parser.add_argument("--block_m8", action="store_true", help="also tiles of 8 rows where the default has 16")
    args = parser.parse_args()
    rows = sass(args) if args.sass else compare(args)
    result = {"rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
