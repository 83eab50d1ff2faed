"""`dbrx demo`: the product tour on a tiny model, offline. It makes a tiny random DBRX
(transformers, DBRX's tokenizer layout), starts a converter and a builder service over one
SQLite job store, submits the conversion (int8 weight-only) and the build through the client
SDK with progress bars, starts the inference service on the engine, streams a greedy
continuation through the SDK next to the reference forward pass on the HF checkpoint, prints
where everything lives and how to call it, and stops the services. Everything lands in
--workdir (default: a temporary folder, removed afterwards)."""

import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from dbrx_serve.client import Client, JobHandle
from dbrx_serve.shared.errors import BadState
from dbrx_serve.shared.jobstore.convert import event_from_pb

from .jobs import progress_bar
from .launcher import LISTENING, Launcher

DEFAULT_TEXT = "Born in north-east France, Soyer trained as a"
WAIT = 600  # seconds any one call may take


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="the product tour on a tiny DBRX made on the spot (offline)")
    p.add_argument("--workdir", default=None, help="where to write model, checkpoint, engine and job store")
    p.add_argument("--input_text", default=DEFAULT_TEXT)
    p.add_argument("--max_output_len", type=int, default=16)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    started = time.monotonic()
    with ExitStack() as stack:
        work = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work = work.absolute()
        work.mkdir(parents=True, exist_ok=True)
        model = make_model(work / "tiny-dbrx")
        launcher = stack.enter_context(Launcher(("--log_level", args.log_level, "--log_format", args.log_format),
                                                quiet=True))
        converter, builder = start_job_services(launcher, f"sqlite:///{work / 'jobs.db'}")
        convert_and_build(converter, builder, model, work)
        inference = start_inference(launcher, work / "engine")
        stream_next_to_reference(inference, model, work, args)
        where_and_how(work, launcher, bool(args.workdir))
        heading("stopping the services")
    print(f"== the demo took {time.monotonic() - started:.0f} s", flush=True)
    return 0


def heading(text: str) -> None:
    print(f"== {text}", flush=True)


def make_model(path: Path) -> Path:
    from dbrx_serve.shared.testing import TinySpec, save_tiny_model

    heading(f"a tiny random DBRX (d_model 64, 2 layers, 4 experts, top-2) in {path}")
    save_tiny_model(path, TinySpec())
    return path


def start_job_services(launcher: Launcher, database_url: str) -> tuple[str, str]:
    """A converter and a builder service, one worker thread each, over one job store."""
    heading(f"starting the converter and builder services over {database_url}")
    children = [launcher.spawn(stage, "serve", stage, "--port", 0, "--metrics_port", 0, "--local_workers", 1,
                               "--database_url", database_url) for stage in ("converter", "builder")]
    converter, builder = (launcher.ready(child, LISTENING).address for child in children)
    print(f"   converter on {converter}, builder on {builder}", flush=True)
    return converter, builder


def follow(title: str, handle: JobHandle) -> None:
    heading(f"{title}: job {handle.id}")
    with progress_bar(handle.id, sys.stderr) as update:
        job = handle.wait(progress=lambda event: update(event_from_pb(event)))
    print(f"   {job.message}: {job.output_dir}", flush=True)


def convert_and_build(converter: str, builder: str, model: Path, work: Path) -> None:
    with Client(converter, timeout=WAIT) as client:
        follow("convert, int8 weight-only, through the SDK", client.submit_convert(
            str(model), str(work / "checkpoint"), dtype="float32", use_weight_only=True,
            weight_only_precision="int8", overwrite=True))
    with Client(builder, timeout=WAIT) as client:
        follow("build through the SDK", client.submit_build(
            str(work / "checkpoint"), str(work / "engine"), max_batch_size=8, max_input_len=128, max_seq_len=256,
            overwrite=True))


def start_inference(launcher: Launcher, engine: Path) -> str:
    heading("starting the inference service on the engine")
    address = launcher.start("inference", "serve", "inference", "--engine_dir", engine, "--port", 0,
                             "--metrics_port", 0, "--device", "cpu").address
    with Client(address) as client:
        client.wait_until_serving(timeout=WAIT)
    print(f"   inference on {address}", flush=True)
    return address


def stream_next_to_reference(inference: str, model: Path, work: Path, args) -> None:
    heading("the engine through the SDK (streamed), then the reference forward pass on the HF checkpoint")
    print(f'Input [Text 0]: "{args.input_text}"')
    print('Output [Text 0 Beam 0]: "', end="", flush=True)
    ids: list[int] = []
    with Client(inference, timeout=WAIT) as client:
        for delta in client.generate_stream(args.input_text, max_new_tokens=args.max_output_len):
            print(delta.text, end="", flush=True)
            ids += delta.token_ids
    print('"', flush=True)
    reference = reference_ids(model, work / "reference.csv", args)
    same = next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b), min(len(ids), len(reference)))
    print(f"   the first {same} of {len(reference)} tokens agree (the engine's int8 weights against the "
          "reference's float32: a random tiny model has near-ties that rounding can flip)", flush=True)


def reference_ids(model: Path, csv: Path, args) -> list[int]:
    """`dbrx run --hf_model_dir` in this process (it prints its Input and Output lines); its ids."""
    from .main import main

    if main(["run", "--hf_model_dir", str(model), "--max_output_len", str(args.max_output_len),
             "--input_text", args.input_text, "--output_csv", str(csv)]) != 0:
        raise BadState("the demo stopped: the reference run failed (see above)")
    return [int(i) for i in csv.read_text().strip().split(",") if i]


def where_and_how(work: Path, launcher: Launcher, kept: bool) -> None:
    heading("where everything lives" + ("" if kept else " (a temporary folder, removed at the end)"))
    for name, path in (("HF model", "tiny-dbrx"), ("checkpoint", "checkpoint"), ("engine", "engine"),
                       ("job store", "jobs.db")):
        print(f"   {name:<11} {work / path}")
    for child in launcher.children:
        print(f"   {child.name:<11} {child.address}  (metrics {child.metrics})")
    heading("how to call it (docs/api.md, README.md)")
    print(HOW_TO.format(engine=work / "engine"), flush=True)


HOW_TO = """\
   dbrx serve all --engine_dir {engine}      # every stage, ports printed; Ctrl-C stops them
   dbrx run --server localhost:50054 --max_output_len 16 --input_text "What is AGI?" --streaming
   python - <<'PY'
   from dbrx_serve.client import Client
   with Client("localhost:50054") as client:
       for delta in client.generate_stream("What is AGI?", max_new_tokens=16):
           print(delta.text, end="", flush=True)
   PY
   curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{{"prompt": "What is AGI?", "max_tokens": 16, "temperature": 0}}'"""
