"""The client SDK in one small program, checked by `mypy --strict` in the tests
(tests/test_packaging.py). Run it against `dbrx serve all --engine_dir ENGINE`:

    python docs/examples/client.py [--inference localhost:50054] [--converter localhost:50052]
"""

import argparse
import asyncio

from dbrx_serve.client import AsyncClient, Client, Completion, DbrxServeError, Delta, JobEvent, Unavailable


def show_progress(event: JobEvent) -> None:
    print(f"job {event.job_id[:8]} {event.progress:4.0%} {event.message}")


def generate(target: str) -> Completion:
    with Client(target, timeout=60.0) as client:
        client.wait_until_serving(timeout=60.0)
        for delta in client.generate_stream("What is AGI?", max_new_tokens=16):
            print(delta.text, end="", flush=True)
        print()
        return client.generate("What is AGI?", max_new_tokens=16, logprobs=True)


async def stream_async(target: str) -> list[Delta]:
    async with AsyncClient(target, timeout=60.0) as client:
        return [delta async for delta in client.generate_stream([9906, 1917], max_new_tokens=4)]


def convert(target: str, model_dir: str, output_dir: str) -> str:
    with Client(target) as client:
        job = client.submit_convert(model_dir, output_dir, dtype="bfloat16", use_weight_only=True,
                                    weight_only_precision="int8")
        return job.wait(progress=show_progress).output_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inference", default="localhost:50054")
    args = parser.parse_args()
    try:
        completion = generate(args.inference)
    except Unavailable as error:
        print(f"no inference service: {error.details}")
        return
    except DbrxServeError as error:
        print(f"{error.code}: {error.details}")
        return
    deltas = asyncio.run(stream_async(args.inference))
    print(completion.text, completion.finish_reason, completion.usage.completion_tokens, len(deltas))


if __name__ == "__main__":
    main()
