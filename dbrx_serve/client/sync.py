"""`Client`: every service of docs/api.md over one blocking channel to one target (a server
answers the services it hosts: `dbrx serve all` gives each stage its own port).

    with Client("localhost:50054") as client:
        print(client.generate("What is AGI?", max_new_tokens=32).text)
"""

from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2_grpc, converter_pb2_grpc, inference_pb2
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from dbrx_serve.shared.errors import Unavailable
from dbrx_serve.shared.status import typed_error

from . import messages as m
from .connection import Connection
from .jobs import JobHandle, watch
from .retry import call

Response = TypeVar("Response")


class Client:
    """Calls raise the typed errors of `dbrx_serve.client` (InvalidInput, NotFound,
    Unauthenticated, Unavailable, ...) with the status `code` and the server's `details`.
    Keyword arguments are those of `Connection` (auth_token, tls_ca, tls, timeout, retry, options)."""

    def __init__(self, target: str, **connection: Any):
        self.connection = Connection(target, **connection)
        self.channel = self.connection.channel()
        self.tokenizer = tokenizer_pb2_grpc.TokenizerServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.converter = converter_pb2_grpc.ConverterServiceStub(self.channel)
        self.builder = builder_pb2_grpc.BuilderServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_until_serving(self, service: str = "", timeout: float = 60.0) -> None:
        """Until the server's health says SERVING for `service` ("": the server; an inference
        server turns SERVING once its engine is loaded); Unavailable after `timeout` seconds."""
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while not serving(self.channel, health, service, self.connection.metadata):
            if time.monotonic() > deadline:
                raise Unavailable(f"{self.connection.target} did not report SERVING within {timeout} s")
            time.sleep(0.1)

    def unary(self, method: Callable[..., Response], request: Any, idempotent: bool = True,
              timeout: float | None = None) -> Response:
        """One call with the connection's token and deadline, retried on UNAVAILABLE when idempotent."""
        seconds = timeout if timeout is not None else self.connection.timeout
        return call(self.connection.retry, lambda: method(request, timeout=seconds,
                                                          metadata=self.connection.metadata), idempotent)

    def stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Iterator[Any]:
        """A server stream (never retried); leaving it early cancels the call."""
        seconds = timeout if timeout is not None else self.connection.timeout
        responses = method(request, timeout=seconds, metadata=self.connection.metadata)
        try:
            yield from responses
        except grpc.RpcError as error:
            raise typed_error(error) from None
        finally:
            responses.cancel()

    # -- InferenceService -----------------------------------------------------------------

    def generate(self, prompt: m.Prompt, timeout: float | None = None, **sampling: Any) -> m.Completion:
        """Text, token ids or a chat; sampling as `messages.generate_request` (greedy by default)."""
        request = m.generate_request(prompt, **sampling)
        return m.completion_of(self.unary(self.inference.Generate, request, idempotent=False, timeout=timeout))

    def generate_stream(self, prompt: m.Prompt, timeout: float | None = None, **sampling: Any) -> Iterator[m.Delta]:
        """The deltas as the engine makes them; leaving the loop early cancels the request."""
        responses = self.stream(self.inference.GenerateStream, m.generate_request(prompt, **sampling), timeout)
        return (m.delta_of(response) for response in responses)

    def model_info(self) -> inference_pb2.ModelInfo:
        return self.unary(self.inference.GetModelInfo, inference_pb2.GetModelInfoRequest())

    # -- TokenizerService ----------------------------------------------------------------

    def encode(self, texts: Sequence[str], allow_special_tokens: bool = False) -> list[list[int]]:
        request = tokenizer_pb2.EncodeRequest(texts=texts, allow_special_tokens=allow_special_tokens)
        return [list(r.ids) for r in self.unary(self.tokenizer.Encode, request).results]

    def decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        request = tokenizer_pb2.DecodeRequest(sequences=[tokenizer_pb2.TokenIds(ids=s) for s in sequences],
                                              skip_special_tokens=skip_special_tokens)
        return list(self.unary(self.tokenizer.Decode, request).texts)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[int]:
        request = tokenizer_pb2.ApplyChatTemplateRequest(messages=m.chat_messages(messages),
                                                         add_generation_prompt=add_generation_prompt)
        return list(self.unary(self.tokenizer.ApplyChatTemplate, request).results[0].ids)

    def tokenizer_info(self) -> tokenizer_pb2.TokenizerInfo:
        return self.unary(self.tokenizer.GetTokenizerInfo, tokenizer_pb2.GetTokenizerInfoRequest())

    # -- ConverterService, BuilderService, JobService ---------------------------------------

    def submit_convert(self, model_dir: str, output_dir: str, idempotency_key: str | None = None,
                       **options: Any) -> JobHandle:
        """ConvertRequest's fields as keywords (enums by name: dtype="bfloat16")."""
        request = m.convert_request(model_dir, output_dir, idempotency_key, options)
        return JobHandle(self, self.unary(self.converter.SubmitConvert, request))

    def submit_build(self, checkpoint_dir: str, output_dir: str, idempotency_key: str | None = None,
                     **options: Any) -> JobHandle:
        """BuildRequest's fields as keywords (kv_cache_dtype="int8")."""
        request = m.build_request(checkpoint_dir, output_dir, idempotency_key, options)
        return JobHandle(self, self.unary(self.builder.SubmitBuild, request))

    def job(self, job_id: str) -> JobHandle:
        """A handle on a job submitted elsewhere."""
        return JobHandle(self, self.get_job(job_id))

    def get_job(self, job_id: str) -> jobs_pb2.Job:
        return self.unary(self.jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id))

    def list_jobs(self, kind: str | None = None, state: str | None = None, limit: int = 0) -> list[jobs_pb2.Job]:
        """Newest first; kind "convert" or "build", state "queued", "running", ... (None: all)."""
        return list(self.unary(self.jobs.ListJobs, m.list_request(kind, state, limit)).jobs)

    def cancel_job(self, job_id: str) -> jobs_pb2.Job:
        return self.unary(self.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id))

    def watch_job(self, job_id: str, after_seq: int = 0) -> Iterator[jobs_pb2.JobEvent]:
        """Every event after `after_seq` until the job ends, resumed across dropped connections."""
        def open_stream(after: int) -> Iterator[jobs_pb2.JobEvent]:
            request = jobs_pb2.WatchJobRequest(id=job_id, after_seq=after)
            return self.jobs.WatchJob(request, metadata=self.connection.metadata)  # type: ignore[no-any-return]
        return watch(open_stream, after_seq, self.connection.retry)


def serving(channel: grpc.Channel, health: health_pb2_grpc.HealthStub, service: str,
            metadata: tuple[tuple[str, str], ...]) -> bool:
    try:
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5, metadata=metadata)
    except grpc.RpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
