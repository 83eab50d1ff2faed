"""Decode and prefill speed of full-width DBRX on one GPU, against the memory-bandwidth floor.

    python bench/decode.py --layers 40 --precision int4 int8 --batch 1 8 32 64 128 --context 512 2048
    python bench/decode.py --layers 4 --precision bf16 --baselines --plot bench/results/decode.png
    python bench/decode.py --layers 40 --precision int4 --group_size 128 --batch 1 64 --tune fast
    python bench/decode.py --smoke        # a tiny model on the CPU, in seconds (CI runs this)
    mpirun -n 2 python bench/decode.py --world 2 --layers 40 --precision int8 --layouts tp2 ep2
    mpirun -n 8 python bench/decode.py --world 8 --layers 40 --precision bf16 --layouts tp8 ep8 tp4pp2 \
        --batch 1 8 64 --context 512 --summarize          # the seed's layouts (and int4 --layouts tp4 on 4)

Under `mpirun -n N` (`--world N`) the engine is a multi-rank one, each rank on its own GPU with its
own share of the weights (`--layouts`: tp2, ep2 = experts over 2 ranks, pp2, tp2pp2 ...), stepped by
rank 0 as `dbrx serve inference` steps it; the floor is then rank 0's bytes (a GPU's share; under
ep, of the experts rank 0's routing took), and each decode run also reports the GPU time of one
eager step's NCCL kernels on rank 0 (`comm_ms`). Pipeline layouts report speed only: their stages
run one after another, so no one rank's bytes are the step's floor. All ranks on one host (the
engine directory is a temporary one on rank 0's disk).

The model is DBRX's width (d_model 6144, 48/8 heads, 16 experts top-4, ffn 10752,
vocab 100352) with `--layers` layers (40 is the whole model) and random weights
made directly on the GPU (no checkpoint), run through the engine a server runs
(`Engine.add_request` / `step`: scheduler, step plan, CUDA graphs, batched
sampler). For a decode measurement the requests' contexts are entered as
already computed (their KV blocks hold random values) instead of running each
prefill, so that large batches at long contexts take seconds; every timed step
is a real engine step.

The floor of a step is the bytes it must read (the weights of every layer --
the experts the routing actually took, counted on an untimed step -- the LM
head, the embedding rows and the KV cache) over the device-to-device copy
bandwidth measured in the same run (bytes read + written). Prints one JSON
object last; `--plot` draws tokens/s and the fraction of the floor by batch.
`--tune fast|full` first times the kernels' configurations for the model's
GEMMs at the --batch sizes and stores the table in the engine directory, as
`dbrx build` does by default (off here: the default tiles); `--tuning FILE` runs
with a stored table instead (build_config.kernel_tuning's JSON, docs/trtllm-checkpoint.md). `--profile B` (GPU)
times every kernel of one step at batch B and groups the eager step's kernels by
the bytes they must read (`breakdown`: time, bytes and GB/s of our GEMMs, cuBLAS's,
attention's and the rest; `gemms`: our GEMMs apart, qkv, dense, the experts' gate+up and down),
beside the bandwidth of a kernel that only reads; run it with DBRX_PDL=0, so that each kernel's time
is its own.
"""

import argparse
import gc
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_model import (FULL, SMOKE, BASE_SEED, ModelSpec, bench_limits, bytes_per_step,  # noqa: E402
                          copy_bandwidth, experts_taken, gemm_launches, layout_name, make_engine, parse_layout,
                          record_routing, routing_recorded, step_bytes, stepping, tune_kernels)

from dbrx_serve.services.inference.executor import follow_main  # noqa: E402
from dbrx_serve.shared.errors import DbrxServeError  # noqa: E402
from dbrx_serve.services.inference.world import (launched_by_mpi, launched_rank, launched_size,  # noqa: E402
                                                    prepare_process, refuse, start)


LOOKAHEAD = {"on": (True,), "off": (False,), "both": (False, True)}  # the engine's lookahead (engine.py)
SUMMARIZE_SHAPE = (923, 100)  # TensorRT-LLM's summarize.py on cnn_dailymail at batch 1: 119.35 tokens/s on 8 GPUs


def seed_context(engine, batch: int, context: int, new_tokens: int) -> list[str]:
    """`batch` requests whose `context`-token prompts count as computed but for the last token: every
    next step decodes one token per request."""
    from dbrx_serve.services.inference.params import SamplingParams

    generator = torch.Generator().manual_seed(BASE_SEED + batch)
    ids = []
    for _ in range(batch):
        prompt = torch.randint(0, 500, (context,), generator=generator).tolist()
        ids.append(engine.add_request(prompt, SamplingParams(max_new_tokens=new_tokens, temperature=0)))
    while engine.scheduler.waiting:
        seq = engine.scheduler.admit()
        engine.blocks.ensure(seq, context)
        seq.num_computed = context - 1
    return ids


def time_steps(engine, steps: int, warmup: int, device) -> list[float]:
    """ms between consecutive step() returns: each waits for its step's tokens, so with the engine's
    lookahead (the next step launched before this one is read) each is one step's period."""
    for _ in range(warmup):
        engine.step()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    times, last = [], time.perf_counter()
    for _ in range(steps):
        engine.step()
        now = time.perf_counter()
        times.append((now - last) * 1e3)
        last = now
    return times


def decode_run(engine, spec: ModelSpec, batch: int, context: int, args, bandwidth: float) -> dict:
    device = engine.runner.device
    ids = seed_context(engine, batch, context, args.warmup + args.steps + 2)
    times = time_steps(engine, args.steps, args.warmup, device)
    active = record_routing(engine)
    for request_id in ids:
        engine.abort(request_id)
    ms = statistics.median(times)
    out = {"precision": spec.precision, "layers": spec.layers, "layout": layout_name(spec.mapping),
           "batch": batch, "context": context, "ms_per_step": round(ms, 3), "ms_min": round(min(times), 3),
           "tokens_per_s": round(batch / ms * 1e3, 1), "active_experts_per_layer": active}
    if spec.mapping.pp_size > 1:  # stages run one after another: rank 0's bytes are no floor of the step
        return out
    if spec.mapping.world_size > 1 and device.type == "cuda":
        out.update(communication(engine, batch, context))
    moved = bytes_per_step(engine, batch, context, active)
    floor_ms = moved / bandwidth * 1e3
    return {**out, "bytes_per_step": moved, "achieved_gbs": round(moved / ms / 1e6, 1),
            "floor_ms": round(floor_ms, 3), "fraction_of_floor": round(floor_ms / ms, 3)}


def prefill_run(engine, spec: ModelSpec, length: int) -> dict:
    """Time to first token of one `length`-token prompt (after one untimed prompt of that length)."""
    from dbrx_serve.services.inference.params import SamplingParams

    device, times = engine.runner.device, []
    for seed in range(2):
        prompt = torch.randint(0, 500, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        start = time.perf_counter()
        engine.add_request(prompt, SamplingParams(max_new_tokens=1, temperature=0))
        while not engine.step():
            pass
        times.append(time.perf_counter() - start)
    return {"precision": spec.precision, "layers": spec.layers, "prompt_tokens": length,
            "seconds": round(times[-1], 4), "tokens_per_s": round(length / times[-1], 1)}


def summarize_run(engine, spec: ModelSpec) -> dict:
    """The seed's summarize.py run shape: one request (batch 1) of a 923-token prompt and 100 greedy
    output tokens, prefill and decode timed together; tokens per second as summarize.py counts them,
    output tokens over the request's seconds (after one untimed request of the same shape)."""
    from dbrx_serve.services.inference.params import SamplingParams

    prompt_tokens, output_tokens = SUMMARIZE_SHAPE
    params = SamplingParams(max_new_tokens=output_tokens, temperature=0, end_id=())  # no end id: all 100
    device, seconds = engine.runner.device, 0.0
    for seed in range(2):
        prompt = torch.randint(0, 500, (prompt_tokens,), generator=torch.Generator().manual_seed(seed)).tolist()
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        start = time.perf_counter()
        result = engine.generate([prompt], params)[0]
        seconds = time.perf_counter() - start
    assert len(result.output_ids) == output_tokens, "every output token is counted"
    return {"precision": spec.precision, "layout": layout_name(spec.mapping), "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens, "seconds": round(seconds, 4),
            "tokens_per_s": round(output_tokens / seconds, 2)}


def kernel_times(engine, batch: int, context: int, eager: bool = True) -> tuple[list[dict], list[int], list[float]]:
    """Per-kernel GPU time of one decode step (rank 0's), the largest first: an eager one (no CUDA
    graph), or the step as timed (`eager` False: its graph replayed; CUPTI sees the graph's kernels);
    eager, also the experts each layer's routing took in that very step (else none seen); and the
    times of our GEMM kernels' launches (OURS) in the order they ran (gemm_breakdown)."""
    from torch.profiler import ProfilerActivity, profile

    ids = seed_context(engine, batch, context, 8)
    with stepping(engine, None if eager else engine.runner.graphs, False):  # no lookahead: one step profiled
        engine.step()
        with profile(activities=[ProfilerActivity.CUDA]) as prof, routing_recorded(engine) as routings:
            engine.step()
            torch.cuda.synchronize()
    active = experts_taken(engine, routings)  # counted after the profile: its kernels are not the step's
    for request_id in ids:
        engine.abort(request_id)
    rows = [{"kernel": e.key[:90], "calls": e.count, "us_total": round(e.device_time_total, 1)}
            for e in prof.key_averages() if e.device_time_total > 0]
    ours = sorted((e for e in prof.events() if e.name in OURS), key=lambda e: e.time_range.start)
    return sorted(rows, key=lambda r: -r["us_total"]), active, [e.time_range.elapsed_us() for e in ours]


# step_bytes' parts and the kernels that read them, by name (the first group whose pattern a name holds)
OURS = ("gemm_kernel",)  # services/inference/kernels/gemm.py
KERNEL_GROUPS = (("gemm", OURS), ("attention", ("attention_kernel", "combine_kernel")),
                 ("cublas", ("nvjet", "gemm", "gemv", "xmma", "cutlass")))


def breakdown(rows: list[dict], parts: dict[str, int]) -> list[dict]:
    """One step's kernel times by group (KERNEL_GROUPS, the rest `other`), each with the bytes it must
    read (step_bytes) and the GB/s that makes: where a step's time goes and how far each part is from
    the bandwidth."""
    groups = {name: {"group": name, "calls": 0, "us": 0.0, "bytes": parts[name], "kernels": []}
              for name in parts}
    for row in rows:
        name = next((g for g, patterns in KERNEL_GROUPS if any(p in row["kernel"] for p in patterns)), "other")
        group = groups[name]
        group["calls"] += row["calls"]
        group["us"] = round(group["us"] + row["us_total"], 1)
        group["kernels"].append(row["kernel"][:40])
    for group in groups.values():
        group["gbs"] = round(group["bytes"] / group["us"] / 1e3, 1) if group["us"] else None
    return sorted(groups.values(), key=lambda g: -g["us"])


def gemm_breakdown(times: list[float], launches: list[tuple[str, int]]) -> list[dict] | None:
    """Our GEMM launches' times (in the order they ran) by what each computes (decode_model.gemm_launches:
    the same launches in the same order, with their bytes): calls, time, bytes and GB/s of each; None
    where the counts differ (not one whole step of ours)."""
    if len(times) != len(launches):
        return None
    gemms = {}
    for us, (name, bytes_) in zip(times, launches):
        gemm = gemms.setdefault(name, {"gemm": name, "calls": 0, "us": 0.0, "bytes": 0})
        gemm["calls"] += 1
        gemm["us"] += us
        gemm["bytes"] += bytes_
    for gemm in gemms.values():
        gemm["gbs"] = round(gemm["bytes"] / gemm["us"] / 1e3, 1) if gemm["us"] else None
        gemm["us"] = round(gemm["us"], 1)
    return list(gemms.values())


def communication(engine, batch: int, context: int) -> dict:
    """GPU time of the NCCL kernels (all-reduce, all-gather, sends) in one eager decode step on rank 0,
    and of all its kernels: rank 0 steps eagerly and so reaches each collective last, so its NCCL
    time is the transfer's, not a wait for a slower rank."""
    rows, _, _ = kernel_times(engine, batch, context)
    comm = sum(r["us_total"] for r in rows if "nccl" in r["kernel"].lower())
    return {"comm_ms": round(comm / 1e3, 3), "eager_gpu_ms": round(sum(r["us_total"] for r in rows) / 1e3, 3),
            "comm_calls": sum(r["calls"] for r in rows if "nccl" in r["kernel"].lower())}


def planned_runs(spec: ModelSpec, args) -> list[tuple[int, int]]:
    """(batch, context) pairs to time; the int8 model leaves little room for KV blocks."""
    return [(b, c) for c in args.context for b in args.batch
            if spec.precision != "int8" or b * c <= args.int8_max_tokens]


def stored_tuning(path: str) -> dict:
    """--tuning's table, checked as an engine's is when it opens (services/inference/kernels/tuning.py)."""
    from dbrx_serve.services.inference.kernels.tuning import check_tables, parse_table

    try:
        tables = json.loads(Path(path).read_text())
        for name, table in check_tables(tables).items():
            parse_table(table, f"kernel_tuning[{name!r}]")
    except (OSError, ValueError, DbrxServeError) as error:
        message = f"--tuning {path}: {error}"
        refuse(message) if launched_by_mpi() else None  # the other ranks exit too
        raise SystemExit(message) from None
    return tables


def run_precision(spec: ModelSpec, args, bandwidth: float, device, backend=None, graphs=True) -> dict:
    started = time.perf_counter()
    runs = planned_runs(spec, args)
    longest = max([*args.prefill, sum(SUMMARIZE_SHAPE) if args.summarize else 0])
    limits = bench_limits(runs, args.warmup + args.steps + 16, longest, graphs)
    tuned = args.tune != "off" and device.type == "cuda" and args.world == 1 and (backend or args.backend) != "torch"
    if args.tuning:  # a stored table, as a build wrote it (read and checked by main; --tune is off)
        tuning = args.tuning_table
    else:
        tuning = tune_kernels(spec, args.tune, sorted(set(args.batch))) if tuned else {}
    tuning_seconds = round(time.perf_counter() - started, 1)
    engine = make_engine(spec, device, backend or args.backend, limits, args.workdir, tuning)
    out = {"build_seconds": round(time.perf_counter() - started, 1),
           "tune": args.tuning or (args.tune if tuned else "off"),
           "tuning_seconds": tuning_seconds, "kernel_tuning": tuning, "decode": [], "prefill": []}
    for batch, context in runs:
        for ahead in LOOKAHEAD[args.lookahead]:
            engine.lookahead = ahead and engine.executor.feeds_tokens
            out["decode"].append({**decode_run(engine, spec, batch, context, args, bandwidth),
                                  "lookahead": engine.lookahead})
            print(json.dumps(out["decode"][-1]), file=sys.stderr, flush=True)
    for length in args.prefill:
        out["prefill"].append(prefill_run(engine, spec, length))
        print(json.dumps(out["prefill"][-1]), file=sys.stderr, flush=True)
    if args.summarize:
        out["summarize"] = summarize_run(engine, spec)
        print(json.dumps(out["summarize"]), file=sys.stderr, flush=True)
    for batch in args.profile:  # the step as timed, and an eager one (its kernels apart, and by group)
        for eager in (False, True):
            rows, active, gemm_times = kernel_times(engine, batch, args.context[0], eager)
            entry = {"gpu_ms": round(sum(r["us_total"] for r in rows) / 1e3, 3), "kernels": rows[:25]}
            if eager and active and spec.mapping.pp_size == 1:  # the triton backend; one stage: the whole step
                entry["breakdown"] = breakdown(rows, step_bytes(engine, batch, args.context[0], active))
                entry["gemms"] = gemm_breakdown(gemm_times, gemm_launches(engine, active))
            out.setdefault("profile", {})[f"batch{batch}" + ("_eager" if eager else "")] = entry
    del engine
    gc.collect()  # the runner and its CUDA graphs refer to each other
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return out


def baselines(args, device, bandwidth: float) -> dict:
    """At batch 1 and 64, 512 tokens of context, bf16: transformers, and our plain-torch path."""
    from decode_baselines import transformers_baseline

    plain = argparse.Namespace(**{**vars(args), "batch": [1, 64], "context": [512], "prefill": [], "profile": []})
    torch_path = run_precision(ModelSpec(FULL, args.layers, "bf16"), plain, bandwidth, device, "torch", False)
    return {"plain torch path": torch_path["decode"],
            "transformers": transformers_baseline(args.layers, [1, 64], 512, args.steps, device)}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--precision", nargs="+", default=["bf16", "int8", "int4"], choices=["bf16", "int8", "int4"])
    parser.add_argument("--group_size", type=int, default=None, choices=[64, 128],
                        help="also run int4 with group-wise scales of this many input rows")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--context", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--prefill", type=int, nargs="*", default=[2048])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backend", default=None, help="engine backend (default: the device's)")
    parser.add_argument("--tune", choices=["off", "fast", "full"], default="off",
                        help="tune the GEMMs at the --batch sizes first, as `dbrx build --tune` does (one GPU)")
    parser.add_argument("--tuning", default=None, metavar="JSON",
                        help="run with this kernel_tuning table (build_config.kernel_tuning's form) instead")
    parser.add_argument("--int8_max_tokens", type=int, default=64 * 2048, help="skip int8 runs with more context")
    parser.add_argument("--lookahead", choices=list(LOOKAHEAD), default="on",
                        help="decode steps launched one ahead (one-rank engines; both: off, then on)")
    parser.add_argument("--profile", type=int, nargs="*", default=[],
                        help="batch sizes to profile per kernel (the step as timed, CUDA graph and all, and eager; "
                             "under programmatic dependent launch a kernel's time counts its wait for the one "
                             "before: DBRX_PDL=0 for a breakdown)")
    parser.add_argument("--baselines", action="store_true", help="transformers and the plain-torch path (bf16)")
    parser.add_argument("--plot", default=None, help="draw tokens/s and fraction of the floor to this PNG")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (seconds)")
    parser.add_argument("--summarize", action="store_true",
                        help="also the seed's summarize.py shape: batch 1, 923-token prompt, 100 output tokens")
    parser.add_argument("--world", type=int, default=1, help="ranks: run under `mpirun -n WORLD`")
    parser.add_argument("--layouts", nargs="+", default=None,
                        help="how the ranks share the model: tp2, ep2, pp2, tp2pp2 ... (default: tpWORLD)")
    args = parser.parse_args(argv)
    if args.tuning and args.tune != "off":
        parser.error("--tuning FILE runs a stored table and --tune makes one: give one of them")
    return args


def world_layouts(args) -> list:
    """The layouts asked for, each of --world ranks, in a world of that size; else the other ranks
    are told to exit (they wait for rank 0's word) and so does this one, saying why."""
    try:
        layouts = [parse_layout(name) for name in args.layouts or [f"tp{args.world}" if args.world > 1 else "world1"]]
        if launched_size() != args.world or any(m.world_size != args.world for m in layouts):
            raise ValueError(f"--world {args.world}: run under `mpirun -n {args.world}` ({launched_size()} ranks "
                             f"here), with layouts of {args.world} ranks")
    except (ValueError, DbrxServeError) as error:
        refuse(str(error)) if launched_by_mpi() else None
        raise SystemExit(str(error)) from None
    return layouts


def decode_rows(out: str, precision: str, batch: list[str], layers: str = "40", *extra: str) -> list[dict]:
    """This benchmark run in this process, as an A/B probe runs it in turn with other kernels (512 tokens
    of context, no prefill, the default tiles; its JSON to `out`): each decode run's batch, tokens/s and
    ms a step."""
    main(["--layers", layers, "--precision", precision, "--batch", *batch, "--context", "512", "--prefill",
          "--tune", "off", "--out", out, *extra])
    rows = list(json.loads(Path(out).read_text())["runs"].values())[0]["decode"]
    return [{k: r[k] for k in ("batch", "tokens_per_s", "ms_per_step")} for r in rows]


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)  # on every rank: a bad command line ends them all alike
    if launched_by_mpi():  # every rank but 0 follows rank 0's engine commands, as a server's do
        prepare_process()
        if launched_rank() > 0:
            raise SystemExit(follow_main())
    layouts = world_layouts(args)
    if args.smoke:
        args.batch, args.context, args.prefill, args.steps, args.warmup = [1, 4], [32], [48], 3, 1
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if args.profile and device.type != "cuda":
        raise SystemExit("--profile times CUDA kernels: run it on a GPU, without --smoke")
    args.tuning_table = stored_tuning(args.tuning) if args.tuning else None  # refused before any model is made
    if args.world > 1:
        start(device.type)  # the other ranks meet it now; whatever fails later ends the world at exit
    bandwidth = copy_bandwidth(device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "copy_bandwidth_gbs": round(bandwidth / 1e9, 1), "runs": {}}
    if args.profile and device.type == "cuda":  # what a kernel that only reads can reach, beside the copy
        from read_bandwidth import read_bandwidth
        result["read_bandwidth_gbs"] = round(read_bandwidth(device) / 1e9, 1)
    with tempfile.TemporaryDirectory(prefix="dbrx-decode-") as workdir:
        args.workdir = Path(workdir)
        for precision, mapping in itertools.product(args.precision, layouts):
            groups = [None] + ([args.group_size] if args.group_size and precision == "int4" else [])
            for group_size in groups:  # int4 per channel, then group-wise beside it
                spec = ModelSpec(SMOKE if args.smoke else FULL, args.layers if not args.smoke else 2, precision,
                                 mapping, group_size)
                result["runs"][spec.name] = run_precision(spec, args, bandwidth, device)
        if args.baselines and device.type == "cuda" and args.world == 1:
            result["baselines"] = baselines(args, device, bandwidth)
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        from decode_plot import plot
        plot(result, args.plot)
    print(text)


if __name__ == "__main__":
    main()
