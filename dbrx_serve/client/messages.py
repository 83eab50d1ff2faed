"""The SDK's values <-> the generated messages, in one place: prompts and sampling into a
GenerateRequest, options into ConvertRequest and BuildRequest (enums by name), and answers
into `Completion` and `Delta`."""

import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2, common_pb2, converter_pb2, inference_pb2
from dbrx_serve.shared.generated.dbrx.serve.v1 import jobs_pb2, tokenizer_pb2

# A prompt: text, token ids, or a chat (each message a {"role": ..., "content": ...} mapping).
Prompt = Union[str, Sequence[int], Sequence[Mapping[str, str]]]
ENUM_FIELDS = {"dtype": ("D_TYPE_", common_pb2.DType), "logits_dtype": ("D_TYPE_", common_pb2.DType),
               "weight_only_precision": ("WEIGHT_ONLY_PRECISION_", common_pb2.WeightOnlyPrecision),
               "kv_cache_dtype": ("KV_CACHE_D_TYPE_", common_pb2.KVCacheDType)}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Delta:
    """One message of a stream: the new token ids, their text (possibly empty: text that may
    begin a stop string is held back), their logprobs when asked; on the last, the finish
    reason ("length", "end_id", "stop", "cancelled", "deadline") and the usage."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Completion:
    """A whole generation: what the deltas of the same request joined give."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str
    usage: Usage
    request_id: str


def finish_reason_name(value: int) -> str | None:
    """FINISH_REASON_END_ID -> "end_id"; unspecified -> None."""
    if value == inference_pb2.FINISH_REASON_UNSPECIFIED:
        return None
    return inference_pb2.FinishReason.Name(value).removeprefix("FINISH_REASON_").lower()  # type: ignore[arg-type]


def usage_of(message: inference_pb2.Usage) -> Usage:
    return Usage(message.prompt_tokens, message.completion_tokens)


def delta_of(message: inference_pb2.GenerateStreamResponse) -> Delta:
    last = message.HasField("usage")
    return Delta(message.text_delta, tuple(message.token_ids), tuple(message.logprobs),
                 finish_reason_name(message.finish_reason), usage_of(message.usage) if last else None)


def completion_of(message: inference_pb2.GenerateResponse) -> Completion:
    return Completion(message.text, tuple(message.output_ids), tuple(message.logprobs),
                      finish_reason_name(message.finish_reason) or "", usage_of(message.usage), message.request_id)


def chat_messages(messages: Sequence[Mapping[str, str]]) -> list[tokenizer_pb2.ChatMessage]:
    return [tokenizer_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages]


def generate_request(prompt: Prompt, *, max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 0.0, seed: int | None = None, stop: Sequence[str] = (),
                     end_id: Sequence[int] = (), logprobs: bool = False, request_id: str = "",
                     skip_special_tokens: bool = False) -> inference_pb2.GenerateRequest:
    """Sampling as SamplingParams (docs/api.md): temperature 0 is greedy, zeros mean "off"."""
    sampling = inference_pb2.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                            top_p=top_p, seed=seed, stop=stop, end_id=end_id,
                                            return_logprobs=logprobs)
    request = inference_pb2.GenerateRequest(sampling=sampling, request_id=request_id,
                                            skip_special_tokens=skip_special_tokens)
    if isinstance(prompt, str):
        request.text = prompt
    elif prompt and all(isinstance(m, Mapping) for m in prompt):
        request.messages.extend(chat_messages(prompt))  # type: ignore[arg-type]
    else:
        request.input_ids.extend(prompt)  # type: ignore[arg-type]
    return request


def enum_value(field: str, value: Any) -> Any:
    """An enum field given by name ("bfloat16", "int8") as its number; anything else as is."""
    if field not in ENUM_FIELDS or not isinstance(value, str):
        return value
    prefix, enum = ENUM_FIELDS[field]
    try:
        return enum.Value(prefix + value.upper())
    except ValueError:
        names = ", ".join(n.removeprefix(prefix).lower() for n in enum.keys() if not n.endswith("UNSPECIFIED"))
        raise InvalidInput(f"{field} must be one of {names}, got {value!r}") from None


def job_fields(options: Mapping[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    """A submit's fields; a fresh idempotency key unless one is given, so a retried submit
    returns the job the first attempt queued instead of a second one."""
    fields = {name: enum_value(name, value) for name, value in options.items()}
    return {**fields, "idempotency_key": idempotency_key or str(uuid.uuid4())}


def convert_request(model_dir: str, output_dir: str, idempotency_key: str | None,
                    options: Mapping[str, Any]) -> converter_pb2.ConvertRequest:
    return converter_pb2.ConvertRequest(model_dir=model_dir, output_dir=output_dir,
                                        **job_fields(options, idempotency_key))


def build_request(checkpoint_dir: str, output_dir: str, idempotency_key: str | None,
                  options: Mapping[str, Any]) -> builder_pb2.BuildRequest:
    return builder_pb2.BuildRequest(checkpoint_dir=checkpoint_dir, output_dir=output_dir,
                                    **job_fields(options, idempotency_key))


def list_request(kind: str | None, state: str | None, limit: int) -> jobs_pb2.ListJobsRequest:
    """kind "convert"/"build", state "running"/... by name; None: all."""
    return jobs_pb2.ListJobsRequest(kind=jobs_pb2.JobKind.Value(f"JOB_KIND_{kind.upper()}") if kind else 0,
                                    state=jobs_pb2.JobState.Value(f"JOB_STATE_{state.upper()}") if state else 0,
                                    limit=limit)


def state_name(job: jobs_pb2.Job | jobs_pb2.JobEvent) -> str:
    """JOB_STATE_SUCCEEDED -> "succeeded"."""
    return jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
