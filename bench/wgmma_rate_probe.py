"""A probe (exploration, kept for its numbers): how long does the int4 GEMM's K loop take with nothing
but its arithmetic, no memory?

gemm_kernel (services/inference/kernels/gemm.py) at a token or a few converts, per K step of 8 KB of int4
weights (128 columns of up and of gate, 64 K rows), 16 words a thread into bfloat16 (NIBBLES_TO_BF16) and
issues 16 wgmma m64nTk16 whose first operand (the weights) comes from registers, then waits for them. Here
a program of one warpgroup runs only that, ITERS times, on words and a token tile already on chip (the token
tile in shared memory), and the time a step and multiprocessor gives the most int4 bytes a second such a
loop could consume were memory free:

    bytes a second = programs x ITERS x 8 KB / time

Variants (VARIANTS): the wgmma alone or with the conversion (rate_kernel's CONVERT), tokens T a tile (wgmma's
N: 8, 16, 32), bfloat16 (k16) or fp8 e4m3 (k32: half the instructions for the same K rows), the first
operand from registers (RS, as gemm_kernel) or shared memory (SS), programs a multiprocessor (--per_sm).

    python bench/wgmma_rate_probe.py OUT.json     # on the GPU; prints one JSON object last

Results: bench/results/wgmma_rate_probe.json (README, "Where a step's time goes").
"""
import argparse
import itertools
import json
import os

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from dbrx_serve.services.inference.kernels.device import num_sms
from dbrx_serve.services.inference.kernels.gemm import BYTES_TO_BF16, NIBBLES_TO_BF16

BLOCK_N = 128  # weight columns a program (gemm_kernel's int4 tile), each of up and gate
K_STEP = 64  # K rows a step (one int4 tile)


@gluon.jit
def rate_kernel(a_ptr, w_ptr, out_ptr, iters, TOKENS: gl.constexpr, FP8: gl.constexpr, SS: gl.constexpr,
                CONVERT: gl.constexpr, BLOCK_N: gl.constexpr, K_STEP: gl.constexpr):
    """iters steps of two [BLOCK_N, K_STEP] x [K_STEP, TOKENS] wgmma products (up and gate), each waited
    for, as gemm_kernel's K loop; the sums stored so that nothing is left out. CONVERT (bfloat16 only):
    1, each step first converts up's and gate's int4 words in registers as gemm_kernel does
    (NIBBLES_TO_BF16, not pure: done every step) and multiplies the results; 2, the same conversions, their
    sum multiplied once (half the wgmma, as a k32 instruction, fp8's, would issue for the same bytes; the
    sum's 32 additions a thread a step count against it); 3 (with SS), the conversions stored to shared
    memory and multiplied from there (the register file left to the conversion); 4, as 3 into two buffers
    in turn, a step's wgmma left running while the next step converts (waited for before its buffer is
    written again); 5, int8 weights instead (a step's 16 KB of bytes in the same register order, BYTES_TO_BF16:
    10 instructions a word of 4)."""
    DT: gl.constexpr = gl.float8e4nv if FP8 else gl.bfloat16
    BITS: gl.constexpr = 8 if FP8 else 16
    MMA: gl.constexpr = gl.NVMMADistributedLayout([3, 0], [4, 1], [16, TOKENS, 256 // BITS])
    A: gl.constexpr = gl.DotOperandLayout(0, MMA, 32 // BITS)
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=min(128, K_STEP * BITS // 8), element_bitwidth=BITS,
                                              rank=2)
    rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, A))
    cols = gl.arange(0, K_STEP, layout=gl.SliceLayout(0, A))
    a = gl.load(a_ptr + rows[:, None] * K_STEP + cols[None, :]).to(DT)
    g = gl.load(a_ptr + BLOCK_N * K_STEP + rows[:, None] * K_STEP + cols[None, :]).to(DT)
    BL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    x = gl.load(a_ptr + gl.arange(0, TOKENS, layout=gl.SliceLayout(1, BL))[:, None] * K_STEP
                + gl.arange(0, K_STEP, layout=gl.SliceLayout(0, BL))[None, :]).to(DT)
    x_smem = gl.allocate_shared_memory(DT, [TOKENS, K_STEP], smem, x)
    if CONVERT == 4:
        a_bufs = gl.allocate_shared_memory(DT, [2, BLOCK_N, K_STEP], smem)
        g_bufs = gl.allocate_shared_memory(DT, [2, BLOCK_N, K_STEP], smem)
    if SS:
        a_op = gl.allocate_shared_memory(DT, [BLOCK_N, K_STEP], smem, gl.convert_layout(a, BL))
        g_op = gl.allocate_shared_memory(DT, [BLOCK_N, K_STEP], smem, gl.convert_layout(g, BL))
    else:
        a_op = a
        g_op = g
    fence_async_shared()
    xt = x_smem.permute((1, 0))
    BYTES: gl.constexpr = 2 if CONVERT == 5 else 1  # a step's bytes a weight value, as int4 (1/2) or int8 (1)
    up_words = _words(w_ptr, BLOCK_N, BYTES)
    gate_words = _words(w_ptr + 2 * BYTES * BLOCK_N * K_STEP, BLOCK_N, BYTES)
    acc = gl.zeros([BLOCK_N, TOKENS], gl.float32, MMA)
    gate = gl.zeros([BLOCK_N, TOKENS], gl.float32, MMA)
    for i in range(iters):
        if CONVERT == 4:
            a_op = a_bufs.index(i % 2)
            g_op = g_bufs.index(i % 2)
        if CONVERT == 3 or CONVERT == 4:
            a_op.store(_converted(up_words, A, BLOCK_N))
            g_op.store(_converted(gate_words, A, BLOCK_N))
            gl.thread_barrier()
            fence_async_shared()
        elif CONVERT == 5:
            a_op = _bytes_converted(up_words, A, BLOCK_N)
            g_op = _bytes_converted(gate_words, A, BLOCK_N)
        elif CONVERT:
            a_op = _converted(up_words, A, BLOCK_N)
            g_op = _converted(gate_words, A, BLOCK_N)
        if CONVERT == 2:
            acc = warpgroup_mma(a_op + g_op, xt, acc, is_async=True)
        else:
            acc = warpgroup_mma(a_op, xt, acc, is_async=True)
            gate = warpgroup_mma(g_op, xt, gate, is_async=True)
        acc, gate = warpgroup_mma_wait(2 if CONVERT == 4 else 0, deps=[acc, gate])
    acc, gate = warpgroup_mma_wait(0, deps=[acc, gate])
    out_rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA))
    out_cols = gl.arange(0, TOKENS, layout=gl.SliceLayout(0, MMA))
    gl.store(out_ptr + gl.program_id(0) * BLOCK_N * TOKENS + out_rows[:, None] * TOKENS + out_cols[None, :],
             acc + gate)


@gluon.jit
def _words(w_ptr, BLOCK_N: gl.constexpr, BYTES: gl.constexpr):
    """A step's tile words [BLOCK_N / 16, 512 BYTES] in registers, 16 BYTES a lane: int4 as ws_gemm_probe.py's
    _tile reads them (BYTES 1), int8 twice as many (BYTES 2)."""
    WORDS: gl.constexpr = gl.BlockedLayout([1, 16 * BYTES], [1, 32], [4, 1], [1, 0])
    r = gl.arange(0, BLOCK_N // 16, layout=gl.SliceLayout(1, WORDS))
    c = gl.arange(0, 512 * BYTES, layout=gl.SliceLayout(0, WORDS))
    return gl.load(w_ptr + r[:, None] * 512 * BYTES + c[None, :])


@gluon.jit
def _bytes_converted(words, A: gl.constexpr, BLOCK_N: gl.constexpr):
    """int8 words in a lane's 32 bytes (K step s, register j, row half h, column
    e), converted and reshaped to wgmma's operand layout (moving nothing)."""
    v = gl.inline_asm_elementwise(BYTES_TO_BF16, "=r,=r,r", [words], dtype=gl.bfloat16, is_pure=False, pack=4)
    v = gl.reshape(v, (BLOCK_N // 64, 4, 8, 4, 4, 2, 2, 2))  # tile w g t s j h e
    v = gl.permute(v, (0, 1, 6, 2, 4, 5, 3, 7))  # rows (tile, w, h, g), columns (s, j, t, e)
    return gl.convert_layout(gl.reshape(v, (BLOCK_N, 64)), A, assert_trivial=True)


@gluon.jit
def _converted(words, A: gl.constexpr, BLOCK_N: gl.constexpr):
    """gemm.py's conversion of the words, reshaped to wgmma's operand layout (moving nothing)."""
    j0, j1 = gl.inline_asm_elementwise(NIBBLES_TO_BF16, "=r,=r,=r,=r,r", [words], dtype=(gl.bfloat16, gl.bfloat16),
                                       is_pure=False, pack=4)
    v = gl.reshape(gl.join(j0, j1), (BLOCK_N // 64, 4, 8, 4, 4, 2, 2, 2))  # as ws_gemm_probe.py's _tile
    v = gl.permute(v, (0, 1, 5, 2, 4, 7, 3, 6))
    return gl.convert_layout(gl.reshape(v, (BLOCK_N, 64)), A, assert_trivial=True)


VARIANTS = ([dict(tokens=t, fp8=False, ss=False, convert=c) for c, t in itertools.product((0, 1, 2), (8, 16, 32))]
            + [dict(tokens=t, fp8=True, ss=False, convert=0) for t in (8, 16, 32)]
            + [dict(tokens=16, fp8=f, ss=True, convert=0) for f in (False, True)]
            + [dict(tokens=t, fp8=False, ss=True, convert=c) for c, t in itertools.product((3, 4), (16, 32))]
            + [dict(tokens=t, fp8=False, ss=False, convert=5) for t in (16, 32)])


def source(tokens: int, convert: int, fp8: bool = False, ss: bool = False):
    """rate_kernel as a variant launches it, for compiling without a GPU (bench/gemm_sass.py's report)."""
    from triton.experimental.gluon._runtime import GluonASTSource

    constants = {"TOKENS": tokens, "FP8": fp8, "SS": ss, "CONVERT": convert, "BLOCK_N": BLOCK_N, "K_STEP": K_STEP}
    signature = {"a_ptr": "*fp32", "w_ptr": "*i8", "out_ptr": "*fp32", "iters": "i32",
                 **{name: "constexpr" for name in constants}}
    index = rate_kernel.arg_names.index
    return GluonASTSource(fn=rate_kernel, signature=signature, constexprs={(index(n),): v for n, v in constants.items()},
                          attrs={(index(n),): [["tt.divisibility", 16]] for n in ("a_ptr", "w_ptr", "out_ptr")})


def instructions_a_step(fp8: bool) -> int:
    """wgmma a step: up and gate, BLOCK_N / 64 slices each, K_STEP / k rows each."""
    return 2 * (BLOCK_N // 64) * (K_STEP // (32 if fp8 else 16))


def run(variant: dict, per_sm: int, iters: int) -> dict:
    programs = per_sm * num_sms(torch.device("cuda"))
    a = torch.randn(2 * BLOCK_N * K_STEP, device="cuda") * 0.1
    w = torch.randint(-128, 128, (4 * BLOCK_N * K_STEP,), dtype=torch.int8, device="cuda")
    out = torch.empty(programs, BLOCK_N, variant["tokens"], device="cuda")

    def launch():
        rate_kernel[(programs,)](a, w, out, iters, TOKENS=variant["tokens"], FP8=variant["fp8"], SS=variant["ss"],
                                 CONVERT=variant["convert"], BLOCK_N=BLOCK_N, K_STEP=K_STEP, num_warps=4)

    launch()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    seconds = min(times)
    per_step = instructions_a_step(variant["fp8"]) // (2 if variant["convert"] == 2 else 1)
    # a step's weight bytes: int4 (fp8 k32 covers them in half the wgmma), or int8 (CONVERT 5)
    step_bytes = 2 * BLOCK_N * K_STEP // (1 if variant["convert"] == 5 else 2)
    return {**variant, "per_sm": per_sm, "iters": iters, "ms": round(seconds * 1e3, 3),
            "ns_a_step_per_sm": round(seconds * 1e9 / (iters * per_sm), 2),
            "ns_a_wgmma_per_sm": round(seconds * 1e9 / (iters * per_sm * per_step), 3),
            "weights_tb_s": round(programs * iters * step_bytes / seconds / 1e12, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("--per_sm", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--iters", type=int, default=4096)
    args = parser.parse_args()
    rows = []
    for variant, per_sm in itertools.product(VARIANTS, args.per_sm):
        try:
            rows.append(run(variant, per_sm, args.iters))
        except Exception as error:  # a variant that does not compile or launch: say so, go on
            rows.append({**variant, "per_sm": per_sm, "error": f"{type(error).__name__}: {str(error)[-400:]}"})
        print(json.dumps(rows[-1]), flush=True)
    result = {"block_n": BLOCK_N, "k_step": K_STEP, "rows": rows}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
