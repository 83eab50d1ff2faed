"""All-reduce at decode sizes on the GPUs of one host: what tensor parallelism pays per call.

    mpirun -n 2 python bench/allreduce.py --rows 1 8 64

A tensor-parallel decode step all-reduces [rows, 6144] bfloat16 twice a layer (attention output and
MoE output: 80 calls for the whole model), a few KB at batch 1: latency, not bandwidth. Times NCCL's
all-reduce eagerly and inside a CUDA graph of 80 calls (as a captured decode step runs them), and
PyTorch's one-shot all-reduce over symmetric (peer-to-peer) memory, which reads every peer's buffer
directly in one kernel (multicast stays off: TORCH_SYMM_MEM_DISABLE_MULTICAST=1). Prints one JSON
object last (rank 0); microseconds per call, median of several graph replays.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dbrx_serve.services.inference.world import NVLINK_MULTICAST_OFF, launched_rank, launched_size  # noqa: E402

CALLS = 80  # all-reduces in a 40-layer decode step


def per_call_us(run, calls: int, replays: int = 20) -> float:
    """`run()` (which makes `calls` all-reduces) captured in a CUDA graph: microseconds per call."""
    run()  # warm-up, outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dist.barrier()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def eager_us(run, calls: int, repeats: int = 20) -> float:
    run()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def nccl(x: torch.Tensor, calls: int):
    def run():
        for _ in range(calls):
            dist.all_reduce(x)
    return run


def one_shot(x: torch.Tensor, calls: int):
    """torch.ops.symm_mem.one_shot_all_reduce on a symmetric-memory buffer (None when unavailable)."""
    try:
        import torch.distributed._symmetric_memory as symm_mem
        buffer = symm_mem.empty(x.shape, dtype=x.dtype, device=x.device)
        group = dist.group.WORLD.group_name
        symm_mem.rendezvous(buffer, group)
        buffer.copy_(x)
        torch.ops.symm_mem.one_shot_all_reduce(buffer, "sum", group)
    except Exception as error:  # noqa: BLE001 (reported, not hidden)
        return None, f"{type(error).__name__}: {str(error)[:200]}"

    def run():
        for _ in range(calls):
            torch.ops.symm_mem.one_shot_all_reduce(buffer, "sum", group)
    return run, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--width", type=int, default=6144)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.update(NVLINK_MULTICAST_OFF)
    rank, size = launched_rank(), launched_size()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{os.environ.get('MASTER_PORT', '29517')}",
                            rank=rank, world_size=size, device_id=torch.device("cuda", torch.cuda.current_device()))
    result = {"world": size, "device": torch.cuda.get_device_name(), "calls_per_graph": CALLS, "rows": []}
    for rows in args.rows:
        x = torch.ones(rows, args.width, dtype=torch.bfloat16, device="cuda")
        row = {"rows": rows, "bytes": x.numel() * x.element_size(),
               "nccl_eager_us": round(eager_us(nccl(x, CALLS), CALLS), 2),
               "nccl_graph_us": round(per_call_us(nccl(x, CALLS), CALLS), 2)}
        run, error = one_shot(x, CALLS)
        everywhere = torch.tensor([run is not None], dtype=torch.int32, device="cuda")
        dist.all_reduce(everywhere, op=dist.ReduceOp.MIN)  # one rank alone would wait for its peers forever
        ran = bool(everywhere.item())
        row["one_shot_graph_us"] = round(per_call_us(run, CALLS), 2) if ran else error or "failed on another rank"
        result["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True) if rank == 0 else None
    dist.destroy_process_group()
    if rank == 0:
        text = json.dumps(result)
        Path(args.out).write_text(text + "\n") if args.out else None
        print(text)


if __name__ == "__main__":
    main()
