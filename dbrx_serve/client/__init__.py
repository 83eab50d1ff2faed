"""The Python client SDK: thin wrappers over the generated stubs, sync (`Client`) and asyncio
(`AsyncClient`), for every service of docs/api.md. No torch: `pip install 'dbrx-serve[client]'`.

    from dbrx_serve.client import Client

    with Client("localhost:50054") as client:
        for delta in client.generate_stream("What is AGI?", max_new_tokens=32):
            print(delta.text, end="", flush=True)

Errors are the typed exceptions below, each with the call's status `code` and the server's
`details`; idempotent calls are retried with backoff on UNAVAILABLE (`RetryPolicy`)."""

from dbrx_serve.shared.errors import (BadState, CapacityExhausted, Cancelled, DbrxServeError, DeadlineExceeded,
                                      InvalidInput, NotFound, Unauthenticated, Unavailable)
from dbrx_serve.shared.generated.dbrx.serve.v1.inference_pb2 import ModelInfo
from dbrx_serve.shared.generated.dbrx.serve.v1.jobs_pb2 import Job, JobEvent
from dbrx_serve.shared.generated.dbrx.serve.v1.tokenizer_pb2 import TokenizerInfo

from .aio import AsyncClient
from .connection import Connection
from .jobs import AsyncJobHandle, JobFailed, JobHandle
from .messages import Completion, Delta, Prompt, Usage, state_name
from .retry import RetryPolicy
from .sync import Client

__all__ = ["AsyncClient", "AsyncJobHandle", "BadState", "CapacityExhausted", "Cancelled", "Client", "Completion",
           "Connection", "DbrxServeError", "DeadlineExceeded", "Delta", "InvalidInput", "Job", "JobEvent",
           "JobFailed", "JobHandle", "ModelInfo", "NotFound", "Prompt", "RetryPolicy", "TokenizerInfo",
           "Unauthenticated", "Unavailable", "Usage", "state_name"]
