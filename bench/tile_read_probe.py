"""A probe (exploration, kept for its numbers): is what holds the int4 expert GEMMs at one token their
loop, or only reading their bytes the way their grid does?

gemm_kernel (services/inference/kernels/gemm.py) at one token reads, per program and K step, 8 KB of int4
tiles (shared/tiles.py) from four places for gate+up (up's two 64-column tiles and gate's two, each
2 KB, each tile's K run contiguous) and 4 KB from two for down. Here a kernel that only reads (and xors what
it reads) walks the same grid of programs, K splits and steps over the same bytes: at gemm_kernel's
addresses ("tiles"), with each program's steps laid end to end ("contiguous": a layout storing a program's
tiles K step by K step), with every program's step s side by side ("interleaved": the programs sweep the
buffer together), or at gemm_kernel's addresses with three steps' loads issued at once ("tiles x3"); each with
a program an item (gemm_kernel's grid) or with 4 or 8 programs a multiprocessor looping over the items
("a SM": persistent); beside bench/read_bandwidth.py's read-only kernel (a grid-stride loop) over the same bytes.

    python bench/tile_read_probe.py OUT.json [--experts 1 2 4 8 16]    # on the GPU; one JSON object last

Each launch is timed as bench/gemm_fixed_cost_probe.py times the GEMM (a CUDA graph of --repeat launches
back to back) over 1 to 16 experts' bytes and fitted the same way (us = intercept + bytes / rate): run both
in one call to set the GEMM beside these. Results: bench/results/tile_read_probe*.json (README, "Where a
step's time goes").
"""
import argparse
import json

import torch
import triton
import triton.language as tl
from gemm_fixed_cost_probe import fit
from read_bandwidth import CONFIGS, read_kernel

from dbrx_serve.services.inference.kernels.device import num_sms
from dbrx_serve.services.inference.kernels.tuner import replay_ms
from dbrx_serve.shared.tiles import TILE_BYTES

@triton.jit
def walk_kernel(w_ptr, sink_ptr, steps, grid_n, grid_e, items, stride_e, stride_n, stride_split, stride_k,
                stride_j1, stride_j2, STREAMS: tl.constexpr, CHUNK: tl.constexpr, UNROLL: tl.constexpr = 1):
    """Items (pid_n, expert, split), pid_n first, taken by the programs in turn (a program an item, or fewer
    programs looping: persistent): each `steps` K steps of STREAMS chunks of CHUNK int32 words, chunk j at
    (j % 2) * stride_j1 + (j // 2) * stride_j2 (in words); a program's xor stored. UNROLL steps' loads are
    issued together (bytes in flight a program; steps a multiple of it)."""
    j = tl.arange(0, STREAMS)
    acc = tl.zeros((STREAMS, CHUNK), dtype=tl.int32)
    for item in range(tl.program_id(0), items, tl.num_programs(0)):
        pid_n, pid_e, pid_k = item % grid_n, (item // grid_n) % grid_e, item // (grid_n * grid_e)
        base = (w_ptr + pid_e.to(tl.int64) * stride_e + pid_n * stride_n + pid_k * stride_split
                + ((j % 2) * stride_j1 + (j // 2) * stride_j2)[:, None] + tl.arange(0, CHUNK)[None, :])
        for s in range(0, steps, UNROLL):
            for u in tl.static_range(UNROLL):
                acc ^= tl.load(base + (s + u) * stride_k)
    tl.store(sink_ptr + tl.program_id(0) * STREAMS * CHUNK + j[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :], acc)


def walk(plan: dict, layout: str, w: torch.Tensor, unroll: int = 1, programs: int = 0):
    """walk_kernel's launch over plan's items in `layout` (a program an item, or `programs` looping over
    them) and the tensor it stores to."""
    p = plan[layout]
    grid_n, grid_e, splits = plan["grid"]
    items = grid_n * grid_e * splits
    programs = min(items, programs) if programs else items
    sink = torch.empty(programs * p["streams"] * p["chunk"], dtype=torch.int32, device=w.device)
    return lambda: walk_kernel[(programs,)](
        w, sink, plan["steps"], grid_n, grid_e, items, p["stride_e"], p["stride_n"], p["stride_split"],
        p["stride_k"], p["stride_j1"], p["stride_j2"], STREAMS=p["streams"], CHUNK=p["chunk"], UNROLL=unroll,
        num_warps=8), sink


# DBRX's expert GEMMs at one token (4 experts): the up half's columns, K, tiles of 128 columns a program,
# K splits (gemm.py's moe_config at one token), gated
SHAPES = {"moe_up": (10752, 6144, 8, True), "moe_down": (6144, 10752, 8, False)}


def layouts(n: int, k: int, split: int, gated: bool, experts: int = 4) -> dict:
    """walk_kernel's arguments (in int32 words) per layout: grid, steps, strides, streams, chunk."""
    kt, pairs = k // 64, n // 128  # K tiles, programs along N
    halves = 2 if gated else 1
    steps = kt // split
    w = TILE_BYTES[4] // 4  # a 64 x 64 int4 tile's words
    step = 2 * halves * w  # a program's words a step
    tiles = dict(stride_e=halves * n // 64 * kt * w, stride_n=2 * kt * w, stride_split=steps * w, stride_k=w,
                 stride_j1=kt * w, stride_j2=n // 64 * kt * w, streams=2 * halves, chunk=w)
    contiguous = dict(stride_e=tiles["stride_e"], stride_n=kt * step, stride_split=steps * step, stride_k=step,
                      stride_j1=0, stride_j2=0, streams=1, chunk=step)
    # every program's step s side by side: the programs sweep the buffer together, as a grid-stride loop does
    interleaved = dict(stride_e=pairs * step, stride_n=step, stride_split=experts * pairs * step,
                       stride_k=experts * pairs * split * step, stride_j1=0, stride_j2=0, streams=1, chunk=step)
    return {"grid": (pairs, experts, split), "steps": steps, "tiles": tiles, "contiguous": contiguous,
            "interleaved": interleaved, "bytes": experts * tiles["stride_e"] * 4}


# (layout, steps' loads issued at once, programs a multiprocessor looping over the items; 0: a program an item)
WALKS = [("tiles", 1, 0), ("contiguous", 1, 0), ("interleaved", 1, 0), ("tiles", 3, 0), ("tiles", 1, 4),
         ("tiles", 1, 8), ("interleaved", 1, 8)]


def read_only_us(w: torch.Tensor, repeat: int) -> float:
    """bench/read_bandwidth.py's read kernel over w's largest evenly divided part: the best of its CONFIGS, us
    a launch (rescaled to all of w)."""
    best = float("inf")
    for block, unroll, warps, per_sm in CONFIGS:
        grid = (per_sm * num_sms(w.device),)
        n = w.numel() // (grid[0] * block * unroll) * (grid[0] * block * unroll)
        if n == 0:
            continue
        sink = torch.empty(grid[0] * block, dtype=torch.int32, device=w.device)
        us = replay_ms(lambda: read_kernel[grid](w, sink, n, BLOCK=block, UNROLL=unroll, num_warps=warps), repeat) * 1e3
        best = min(best, us * w.numel() / n)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("--experts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda")
    rows, fits = [], []
    for name, (n, k, split, gated) in SHAPES.items():
        points = {}
        for experts in args.experts:
            plan = layouts(n, k, split, gated, experts)
            w = torch.empty(plan["bytes"], dtype=torch.uint8, device=device).random_().view(torch.int32)
            timed = {}
            for layout, unroll, per_sm in WALKS:
                name_of = layout + ("" if unroll == 1 else f" x{unroll}") + (f", {per_sm} a SM" if per_sm else "")
                launch, _ = walk(plan, layout, w, unroll, per_sm * num_sms(device))
                timed[name_of] = replay_ms(launch, args.repeat) * 1e3
            timed["read_bandwidth.py"] = read_only_us(w, args.repeat)
            for layout, us in timed.items():
                rows.append({"shape": name, "experts": experts, "layout": layout, "bytes": plan["bytes"],
                             "us": round(us, 2), "gbs": round(plan["bytes"] / us / 1e3, 1)})
                points.setdefault(layout, []).append((plan["bytes"], us))
                print(json.dumps(rows[-1]), flush=True)
        for layout, pts in points.items():
            fits.append({"shape": name, "layout": layout, **fit(pts)})
            print(json.dumps(fits[-1]), flush=True)
    result = {"sms": num_sms(device), "repeat": args.repeat, "rows": rows, "fits": fits}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
