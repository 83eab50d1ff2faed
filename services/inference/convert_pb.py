"""Protobuf <-> engine values for InferenceService, in one place, with the
checks that are about the wire: exactly one prompt form, every repeated or
free-length field bounded before it is copied, and run.py's conventions
(top_p 0 turns top-p off; the proto's 0 for "unset" is refused where the
engine needs a value, as max_new_tokens)."""

from dataclasses import dataclass

from dbrx_serve.services.tokenizer.chat import ChatMessage
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.generated.dbrx.serve.v1 import common_pb2
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb

from .engine import Engine
from .engine_dir import BACKEND
from .outputs import StepOutput
from .params import MAX_END_IDS, MAX_STOP_STRINGS, SamplingParams
from .prompt import Chat, Prompt
from .stop import FinishReason

MAX_CHAT_MESSAGES = 256
MAX_ROLE_CHARS = 64
MAX_REQUEST_ID_CHARS = 128
PROMPT_FIELDS = ("text", "input_ids", "messages")
PB_OF_FINISH_REASON = {FinishReason.LENGTH: pb.FINISH_REASON_LENGTH, FinishReason.END_ID: pb.FINISH_REASON_END_ID,
                       FinishReason.STOP: pb.FINISH_REASON_STOP, FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
                       FinishReason.DEADLINE: pb.FINISH_REASON_DEADLINE}
FINISH_REASON_OF_PB = {value: reason for reason, value in PB_OF_FINISH_REASON.items()}


@dataclass(frozen=True)
class GenerateCall:
    """What a GenerateRequest asks for, checked; the prompt is not tokenized yet."""

    prompt: Prompt
    params: SamplingParams
    request_id: str | None


def call_from_pb(request: pb.GenerateRequest, max_input_len: int) -> GenerateCall:
    return GenerateCall(prompt_from_pb(request, max_input_len),
                        params_from_pb(request.sampling, request.skip_special_tokens),
                        request_id_from_pb(request.request_id))


def prompt_from_pb(request: pb.GenerateRequest, max_input_len: int) -> Prompt:
    given = [name for name in PROMPT_FIELDS if len(getattr(request, name))]
    if not given:
        raise InvalidInput("the prompt is empty: give exactly one of text, input_ids or messages")
    if len(given) > 1:
        raise InvalidInput(f"give exactly one of text, input_ids or messages, not {' and '.join(given)}")
    return PROMPT_OF_FIELD[given[0]](request, max_input_len)


def text_of(request: pb.GenerateRequest, max_input_len: int) -> str:
    return request.text  # its length is checked against max_input_len before it is encoded (prompt.py)


def ids_of(request: pb.GenerateRequest, max_input_len: int) -> list[int]:
    if len(request.input_ids) > max_input_len:
        raise InvalidInput(f"the prompt has {len(request.input_ids)} tokens, more than the engine's max_input_len "
                           f"{max_input_len}: shorten it")
    return list(request.input_ids)


def chat_of(request: pb.GenerateRequest, max_input_len: int) -> Chat:
    check_count("chat messages", len(request.messages), MAX_CHAT_MESSAGES)
    long_role = next((m.role for m in request.messages if len(m.role) > MAX_ROLE_CHARS), None)
    if long_role is not None:
        raise InvalidInput(f"a chat role has at most {MAX_ROLE_CHARS} characters, got {long_role[:80]!r}...")
    return Chat(tuple(ChatMessage(m.role, m.content) for m in request.messages))


PROMPT_OF_FIELD = {"text": text_of, "input_ids": ids_of, "messages": chat_of}


def params_from_pb(sampling: pb.SamplingParams, skip_special_tokens: bool) -> SamplingParams:
    """run.py's reading: top_p in [0, 1] with 0 for "off"; an unset seed draws one per request."""
    if not 0 <= sampling.top_p <= 1:
        raise InvalidInput(f"top_p must lie in [0, 1] (0 turns it off), got {sampling.top_p}")
    check_count("stop strings", len(sampling.stop), MAX_STOP_STRINGS)
    check_count("end ids", len(sampling.end_id), MAX_END_IDS)
    return SamplingParams(max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                          top_k=sampling.top_k, top_p=sampling.top_p or 1.0,
                          seed=sampling.seed if sampling.HasField("seed") else None, stop=tuple(sampling.stop),
                          end_id=tuple(sampling.end_id) or None, return_logprobs=sampling.return_logprobs,
                          skip_special_tokens=skip_special_tokens)


def request_id_from_pb(request_id: str) -> str | None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidInput(f"request_id has {len(request_id)} characters; use at most {MAX_REQUEST_ID_CHARS}")
    return request_id or None


def check_count(what: str, count: int, limit: int) -> None:
    if count > limit:
        raise InvalidInput(f"give at most {limit} {what}, got {count}")


def params_to_pb(params: SamplingParams) -> pb.SamplingParams:
    """The wire form of engine params (clients: dbrx run --server, dbrx summarize --server)."""
    return pb.SamplingParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                             top_k=params.top_k, top_p=0.0 if params.top_p == 1.0 else params.top_p,
                             seed=params.seed, stop=params.stop, end_id=params.end_id or (),
                             return_logprobs=params.return_logprobs)


def usage_to_pb(num_prompt_tokens: int, num_completion_tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=num_prompt_tokens, completion_tokens=num_completion_tokens)


def stream_response(output: StepOutput, usage: pb.Usage | None) -> pb.GenerateStreamResponse:
    """One step's news; the last carries its finish reason and the usage."""
    return pb.GenerateStreamResponse(token_ids=output.token_ids, text_delta=output.text_delta,
                                     logprobs=output.logprobs, usage=usage,
                                     finish_reason=PB_OF_FINISH_REASON.get(output.finish_reason, 0))


def generate_response(outputs: list[StepOutput], num_prompt_tokens: int) -> pb.GenerateResponse:
    ids = [t for o in outputs for t in o.token_ids]
    return pb.GenerateResponse(output_ids=ids, text="".join(o.text_delta for o in outputs),
                               finish_reason=PB_OF_FINISH_REASON[outputs[-1].finish_reason],
                               usage=usage_to_pb(num_prompt_tokens, len(ids)),
                               logprobs=[p for o in outputs for p in o.logprobs], request_id=outputs[-1].request_id)


def model_info_to_pb(engine: Engine) -> pb.ModelInfo:
    engine_dir, limits = engine.engine_dir, engine.limits
    mapping = {name: value for name, value in engine_dir.mapping.to_dict().items() if name != "world_size"}
    dtype = common_pb2.DType.Value(f"D_TYPE_{engine_dir.config.torch_dtype.upper()}")  # "float32" -> D_TYPE_FLOAT32
    return pb.ModelInfo(
        engine_dir=str(engine_dir.path), dtype=dtype,
        quant_algo=engine_dir.quant_algo or "", kv_cache_quant_algo=engine_dir.kv_cache_quant_algo or "",
        mapping=common_pb2.ParallelMapping(**mapping), max_batch_size=limits.max_batch_size,
        max_input_len=limits.max_input_len, max_seq_len=limits.max_seq_len, max_num_tokens=limits.max_num_tokens,
        backend=engine_dir.build.get("backend", BACKEND), device=str(engine.runner.device),
        vocab_size=engine.vocab_size, num_kv_blocks=engine.blocks.num_blocks, tokens_per_block=limits.tokens_per_block,
        manifest_sha256=engine_dir.manifest_sha256, has_tokenizer=engine.tokenizer is not None,
        max_queue_size=limits.max_queue_size)
