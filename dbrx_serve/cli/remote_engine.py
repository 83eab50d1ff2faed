"""A running inference service seen as the engine `dbrx run` and `dbrx
summarize` drive in-process (`--server HOST:PORT`): `generate` runs prompts
together (sent at once, so the service batches them continuously) and
`stream` yields one request's step outputs as they come. Status codes become
the typed errors the commands print."""

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import grpc

from dbrx_serve.services.inference.convert_pb import FINISH_REASON_OF_PB, params_to_pb
from dbrx_serve.services.inference.outputs import Result, StepOutput
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc as pb_grpc
from dbrx_serve.shared.rpc import typed_error

from .jobs import _channel

MAX_CONCURRENT_CALLS = 64


def request_of(prompt: str | list[int], params: SamplingParams) -> pb.GenerateRequest:
    sampling = params_to_pb(params)
    if isinstance(prompt, str):
        return pb.GenerateRequest(text=prompt, sampling=sampling, skip_special_tokens=params.skip_special_tokens)
    return pb.GenerateRequest(input_ids=prompt, sampling=sampling, skip_special_tokens=params.skip_special_tokens)


class RemoteEngine:
    def __init__(self, target: str, auth_token: str | None = None, tls_ca: str | None = None):
        self.channel = _channel(target, tls_ca)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self.info = self.call(self.stub.GetModelInfo, pb.GetModelInfoRequest())
        self.vocab_size, self.has_tokenizer = self.info.vocab_size, self.info.has_tokenizer

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.channel.close()

    def call(self, method, request):
        try:
            return method(request, metadata=self.metadata)
        except grpc.RpcError as error:
            raise typed_error(error) from None

    def generate(self, prompts: list, params: SamplingParams) -> list[Result]:
        """All prompts in flight at once; results in prompt order."""
        with ThreadPoolExecutor(min(len(prompts), MAX_CONCURRENT_CALLS) or 1) as pool:
            responses = pool.map(lambda p: self.call(self.stub.Generate, request_of(p, params)), prompts)
            return [result_of(prompt, response) for prompt, response in zip(prompts, responses)]

    def stream(self, prompt: str | list[int], params: SamplingParams) -> Iterator[StepOutput]:
        responses = self.call(self.stub.GenerateStream, request_of(prompt, params))
        try:
            for r in responses:
                yield StepOutput("", tuple(r.token_ids), r.text_delta, tuple(r.logprobs),
                                 FINISH_REASON_OF_PB.get(r.finish_reason))
        except grpc.RpcError as error:
            raise typed_error(error) from None


def result_of(prompt, response: pb.GenerateResponse) -> Result:
    return Result(response.request_id, tuple(prompt) if not isinstance(prompt, str) else (),
                  tuple(response.output_ids), response.text, FINISH_REASON_OF_PB[response.finish_reason],
                  tuple(response.logprobs))
