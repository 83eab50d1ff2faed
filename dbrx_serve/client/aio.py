"""`AsyncClient`: `Client` for asyncio (grpc.aio), the same methods as coroutines, and
`generate_stream` and `watch_job` as async iterators.

    async with AsyncClient("localhost:50054") as client:
        async for delta in client.generate_stream("What is AGI?", max_new_tokens=32):
            print(delta.text, end="")
"""

from typing import Any, AsyncIterator, Callable, Mapping, Sequence, TypeVar

import grpc

from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2_grpc, converter_pb2_grpc, inference_pb2
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from dbrx_serve.shared.status import typed_error

from . import messages as m
from .connection import Connection
from .jobs import AsyncJobHandle, watch_async
from .retry import call_async

Response = TypeVar("Response")


class AsyncClient:
    """Made and used on one event loop; keyword arguments as `Client`'s."""

    def __init__(self, target: str, **connection: Any):
        self.connection = Connection(target, **connection)
        self.channel = self.connection.aio_channel()
        self.tokenizer = tokenizer_pb2_grpc.TokenizerServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.converter = converter_pb2_grpc.ConverterServiceStub(self.channel)
        self.builder = builder_pb2_grpc.BuilderServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def unary(self, method: Callable[..., Any], request: Any, idempotent: bool = True,
                    timeout: float | None = None) -> Any:
        seconds = timeout if timeout is not None else self.connection.timeout
        return await call_async(self.connection.retry, lambda: method(request, timeout=seconds,
                                                                      metadata=self.connection.metadata), idempotent)

    async def stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> AsyncIterator[Any]:
        seconds = timeout if timeout is not None else self.connection.timeout
        responses = method(request, timeout=seconds, metadata=self.connection.metadata)
        try:
            async for response in responses:
                yield response
        except grpc.RpcError as error:
            raise typed_error(error) from None
        finally:
            responses.cancel()

    # -- InferenceService -----------------------------------------------------------------

    async def generate(self, prompt: m.Prompt, timeout: float | None = None, **sampling: Any) -> m.Completion:
        request = m.generate_request(prompt, **sampling)
        return m.completion_of(await self.unary(self.inference.Generate, request, idempotent=False, timeout=timeout))

    async def generate_stream(self, prompt: m.Prompt, timeout: float | None = None,
                              **sampling: Any) -> AsyncIterator[m.Delta]:
        async for response in self.stream(self.inference.GenerateStream, m.generate_request(prompt, **sampling),
                                          timeout):
            yield m.delta_of(response)

    async def model_info(self) -> inference_pb2.ModelInfo:
        return await self.unary(self.inference.GetModelInfo, inference_pb2.GetModelInfoRequest())  # type: ignore[no-any-return]

    # -- TokenizerService ----------------------------------------------------------------

    async def encode(self, texts: Sequence[str], allow_special_tokens: bool = False) -> list[list[int]]:
        request = tokenizer_pb2.EncodeRequest(texts=texts, allow_special_tokens=allow_special_tokens)
        return [list(r.ids) for r in (await self.unary(self.tokenizer.Encode, request)).results]

    async def decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        request = tokenizer_pb2.DecodeRequest(sequences=[tokenizer_pb2.TokenIds(ids=s) for s in sequences],
                                              skip_special_tokens=skip_special_tokens)
        return list((await self.unary(self.tokenizer.Decode, request)).texts)

    async def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                                  add_generation_prompt: bool = True) -> list[int]:
        request = tokenizer_pb2.ApplyChatTemplateRequest(messages=m.chat_messages(messages),
                                                         add_generation_prompt=add_generation_prompt)
        return list((await self.unary(self.tokenizer.ApplyChatTemplate, request)).results[0].ids)

    async def tokenizer_info(self) -> tokenizer_pb2.TokenizerInfo:
        return await self.unary(self.tokenizer.GetTokenizerInfo, tokenizer_pb2.GetTokenizerInfoRequest())  # type: ignore[no-any-return]

    # -- ConverterService, BuilderService, JobService ---------------------------------------

    async def submit_convert(self, model_dir: str, output_dir: str, idempotency_key: str | None = None,
                             **options: Any) -> AsyncJobHandle:
        request = m.convert_request(model_dir, output_dir, idempotency_key, options)
        return AsyncJobHandle(self, await self.unary(self.converter.SubmitConvert, request))

    async def submit_build(self, checkpoint_dir: str, output_dir: str, idempotency_key: str | None = None,
                           **options: Any) -> AsyncJobHandle:
        request = m.build_request(checkpoint_dir, output_dir, idempotency_key, options)
        return AsyncJobHandle(self, await self.unary(self.builder.SubmitBuild, request))

    async def job(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, await self.get_job(job_id))

    async def get_job(self, job_id: str) -> jobs_pb2.Job:
        return await self.unary(self.jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id))  # type: ignore[no-any-return]

    async def list_jobs(self, kind: str | None = None, state: str | None = None,
                        limit: int = 0) -> list[jobs_pb2.Job]:
        return list((await self.unary(self.jobs.ListJobs, m.list_request(kind, state, limit))).jobs)

    async def cancel_job(self, job_id: str) -> jobs_pb2.Job:
        return await self.unary(self.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id))  # type: ignore[no-any-return]

    def watch_job(self, job_id: str, after_seq: int = 0) -> AsyncIterator[jobs_pb2.JobEvent]:
        def open_stream(after: int) -> AsyncIterator[jobs_pb2.JobEvent]:
            request = jobs_pb2.WatchJobRequest(id=job_id, after_seq=after)
            return self.jobs.WatchJob(request, metadata=self.connection.metadata)  # type: ignore[no-any-return]
        return watch_async(open_stream, after_seq, self.connection.retry)
