"""Per-step time of an engine's MPI world on the CPU, and what the step's broadcast alone costs.

    python bench/world_step.py --engine_dir E [--batch 8] [--prompt_len 16] [--steps 64]
    python bench/world_step.py --broadcast --world 2 [--batch 8]

The first runs `--batch` greedy requests together through the engine (Engine.add_request / step, as
a server does) and times every decode step after the prefill on rank 0: the plan's broadcast, each
rank's share of the forward pass with its all-reduces or stage-to-stage sends, the logits' way back
to rank 0, and sampling. An engine of several ranks starts its own world, as `dbrx run` does.

The second times only the broadcast of a decode step's plan to `--world` ranks and back (rank 0
sends, the last rank answers with one int), as the engine sends it (a packed int32 array:
world.World.send). Prints one JSON object.
"""

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine_dir")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--broadcast", action="store_true", help="time the plan's broadcast alone")
    parser.add_argument("--world", type=int, default=2, help="--broadcast: ranks")
    args = parser.parse_args(argv)
    from dbrx_serve.services.inference.launch import as_world, engine_world_size, run_world
    from dbrx_serve.services.inference.world import launched_by_mpi

    world = args.world if args.broadcast else engine_world_size(args.engine_dir)
    if world > 1 and not launched_by_mpi():  # this script again, as a world
        return run_world(argv, world, program=(__file__,))
    if args.broadcast:
        return print_json(broadcast(args))
    if (status := as_world(argv, args.engine_dir, None)) is not None:  # a rank other than 0
        return status
    import torch

    torch.set_num_threads(args.threads)
    return print_json(engine_steps(args, world))


def print_json(result: dict | None) -> int:
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


def engine_steps(args, world: int) -> dict:
    from dbrx_serve.services.inference.engine import Engine
    from dbrx_serve.services.inference.params import SamplingParams

    engine = Engine.from_dir(args.engine_dir, "cpu")
    engine.warm_up()
    params = SamplingParams(max_new_tokens=args.steps + 1, temperature=0)
    for i in range(args.batch):
        engine.add_request([(7 * i + j) % 500 + 1 for j in range(args.prompt_len)], params)
    engine.step()  # the prefill
    times = []
    while engine.has_unfinished:
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return {"engine_dir": args.engine_dir, "world_size": world, "mapping": engine.engine_dir.mapping.to_dict(),
            "batch": args.batch, "decode_steps": len(times), "ms_per_step_median": 1e3 * statistics.median(times),
            "ms_per_step_mean": 1e3 * statistics.fmean(times)}


def broadcast(args, rounds: int = 2000) -> dict | None:
    """Rank 0's view of a decode plan's broadcast and a one-int answer from the last rank (None elsewhere)."""
    import numpy as np
    from mpi4py import MPI

    from dbrx_serve.services.inference.plan import StepPlan
    from dbrx_serve.services.inference.world import receive, send

    comm, B = MPI.COMM_WORLD, args.batch
    rows = np.arange(B + 1, dtype=np.int32)
    plan = StepPlan(rows[:-1], rows[:-1] + 16, rows[:-1], rows, np.full(B, 17, np.int32),
                    np.zeros((B, 4), np.int32), rows[:-1])
    answer, result = np.zeros(1, np.int32), {"world_size": comm.size, "batch": B}
    comm.Barrier()
    started = time.perf_counter()
    for _ in range(rounds):
        send(comm, plan.pack()) if comm.rank == 0 else receive(comm)
        comm.Bcast(answer, root=comm.size - 1)
    result["packed_us_round_trip"] = 1e6 * (time.perf_counter() - started) / rounds
    return result if comm.rank == 0 else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
