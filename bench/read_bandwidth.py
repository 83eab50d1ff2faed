"""The bandwidth of a kernel that only reads, on a CUDA GPU: what a decode step's weight reads could
reach, beside bench/decode_model.py's copy bandwidth (which counts a read and a write)."""

import torch
import triton
import triton.language as tl

from dbrx_serve.services.inference.kernels.device import num_sms

# (int32 a chunk, chunks a step, warps, programs a multiprocessor): the best of these is reported
CONFIGS = [(block, unroll, warps, per_sm) for block in (2048, 4096) for unroll in (1, 4) for warps in (4, 8)
           for per_sm in (4, 8)]


@triton.jit
def read_kernel(src_ptr, sink_ptr, n, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Every program's chunks of src (UNROLL chunks of BLOCK a step, the programs' steps interleaved)
    xor'ed together; n a multiple of BLOCK * UNROLL * the programs."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in range(tl.program_id(0) * BLOCK * UNROLL, n, tl.num_programs(0) * BLOCK * UNROLL):
        for u in tl.static_range(UNROLL):
            acc ^= tl.load(src_ptr + start + u * BLOCK + offs)
    tl.store(sink_ptr + tl.program_id(0) * BLOCK + offs, acc)


def read_bandwidth(device: torch.device) -> float:
    """Bytes read per second from a 2 GiB buffer, the best of CONFIGS (each the median of ~60 ms of
    launches)."""
    src = torch.empty(2 << 30, dtype=torch.uint8, device=device).random_().view(torch.int32)
    best = 0.0
    for block, unroll, warps, per_sm in CONFIGS:
        grid = (per_sm * num_sms(device),)
        sink = torch.empty(grid[0] * block, dtype=torch.int32, device=device)
        ms = triton.testing.do_bench(lambda: read_kernel[grid](src, sink, src.numel(), BLOCK=block, UNROLL=unroll,
                                                               num_warps=warps), warmup=3, rep=60, return_mode="median")
        best = max(best, src.numel() * 4 / (ms * 1e-3))
    return best
