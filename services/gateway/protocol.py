"""OpenAI's HTTP API <-> InferenceService, in one place: the request bodies
(pydantic), each made into one GenerateRequest per choice, and the response
bodies and stream chunks made from the service's messages.

- Unknown parameters are ignored, as OpenAI's server does. Known ones the
  engine cannot honour (NOT_HONOURED) are refused, naming them, unless they
  hold a value that asks for nothing (`presence_penalty: 0`).
- `n` choices are n requests. With a `seed`, choice j of every prompt gets
  seed + j (mod 2**64): choice 0 is the request a lone `seed` makes, and
  each choice is reproducible on its own.
- `stop_token_ids` are added to the model's default stop ids (the engine's
  `end_id` replaces them, so the gateway sends both).
- `logprobs` are the chosen tokens' log-probabilities (the engine computes
  no others): chat `top_logprobs` and completion `logprobs` above 0 are
  refused. With vLLM's `return_tokens_as_token_ids` each token is named
  `token_id:N` instead of its text (no tokenizer needed).
- `finish_reason` is "stop" for an end id or a stop string, "length" for
  max_tokens or the engine's max_seq_len.
"""

import time
import uuid
from dataclasses import dataclass
from itertools import accumulate
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dbrx_serve.shared.errors import Unavailable, shown
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2

from .errors import BadParameter, NotFound

MAX_CHOICES = 16  # n
MAX_GENERATIONS = 128  # prompts x n in one request
MAX_SEED = 2**64 - 1
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
TokenId = Annotated[int, Field(ge=0, le=2**32 - 1)]
FINISH_REASON = {pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_END_ID: "stop", pb.FINISH_REASON_STOP: "stop"}

# name -> (values that ask for nothing, why any other is refused)
NOT_HONOURED = {
    "presence_penalty": ((None, 0), "the engine has no presence penalty"),
    "frequency_penalty": ((None, 0), "the engine has no frequency penalty"),
    "repetition_penalty": ((None, 1), "the engine has no repetition penalty"),
    "min_p": ((None, 0), "the engine has no min-p sampling"),
    "logit_bias": ((None, {}), "the engine cannot bias logits"),
    "min_tokens": ((None, 0), "the engine has no minimum length: an end id stops a request whenever sampled"),
    "ignore_eos": ((None, False), "InferenceService cannot turn end ids off (its empty end_id means the "
                                  "model's default stop ids)"),
    "best_of": ((None, 1), "the engine ranks no candidates; use n"),
    "use_beam_search": ((None, False), "the engine has no beam search"),
    "echo": ((None, False), "the prompt is not returned; call /tokenize and /detokenize"),
    "suffix": ((None, ""), "the engine does not insert text"),
    "tools": ((None, []), "the gateway has no tool calling"),
    "functions": ((None, []), "the gateway has no function calling"),
    "tool_choice": ((None, "none", "auto"), "the gateway has no tool calling"),
    "function_call": ((None, "none", "auto"), "the gateway has no function calling"),
    "response_format": ((None, {"type": "text"}), "the engine has no constrained decoding"),
}


# --- the two APIs' answers ---

class CompletionApi:
    object = chunk_object = "text_completion"
    id_prefix = "cmpl-"

    @staticmethod
    def choice(index: int, text: str, logprobs: dict | None, finish: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    chunk_choice = choice

    @staticmethod
    def first_chunk_choice(index: int) -> dict | None:
        return None

    @staticmethod
    def logprobs(tokens: list[str], logprobs: list[float], offset: int) -> dict:
        offsets = list(accumulate((len(t) for t in tokens[:-1]), initial=offset))
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": offsets}


class ChatApi:
    object, chunk_object = "chat.completion", "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    @staticmethod
    def choice(index: int, text: str, logprobs: dict | None, finish: str | None) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish}

    @staticmethod
    def chunk_choice(index: int, text: str, logprobs: dict | None, finish: str | None) -> dict:
        return {"index": index, "delta": {"content": text} if text else {}, "logprobs": logprobs,
                "finish_reason": finish}

    @staticmethod
    def first_chunk_choice(index: int) -> dict | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    @staticmethod
    def logprobs(tokens: list[str], logprobs: list[float], offset: int) -> dict:
        return {"content": [{"token": t, "logprob": p, "bytes": None if "\ufffd" in t else list(t.encode()),
                             "top_logprobs": []} for t, p in zip(tokens, logprobs)]}


# --- request bodies ---

class StreamOptions(BaseModel):
    include_usage: bool | None = False


class SamplingRequest(BaseModel):
    """The parameters /v1/completions and /v1/chat/completions share (null means the default)."""

    model_config = ConfigDict(extra="allow")  # kept to be checked against NOT_HONOURED, else ignored
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: int | None = Field(None, ge=-1)  # vLLM's extras from here on; top_k -1 or 0: off
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool | None = True
    return_tokens_as_token_ids: bool | None = False

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingRequest):
    api: ClassVar[type] = CompletionApi
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    logprobs: int | None = Field(None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def not_empty(cls, prompt):
        prompts = prompt_list(prompt)
        if not prompts or not all(prompts):
            raise ValueError("give a non-empty prompt: text, token ids, or a list of either")
        return prompt

    @property
    def prompts(self) -> list[dict]:
        """GenerateRequest's prompt fields, one per prompt."""
        return [{"text": p} if isinstance(p, str) else {"input_ids": p} for p in prompt_list(self.prompt)]

    def wants_logprobs(self) -> bool:
        if self.logprobs:
            raise BadParameter(f"logprobs {self.logprobs}: the engine gives the chosen token's logprob only; "
                               "ask for 0", "logprobs")
        return self.logprobs == 0


def prompt_list(prompt) -> list:
    """A completion's prompts: a text or an id list alone, or a list of either."""
    single = isinstance(prompt, str) or (prompt and isinstance(prompt[0], int))
    return [prompt] if single else list(prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: str = Field(min_length=1)
    content: str | list[TextPart] | None = None

    def to_pb(self) -> tokenizer_pb2.ChatMessage:
        content = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content or ())
        return tokenizer_pb2.ChatMessage(role=self.role, content=content)


class ChatRequest(SamplingRequest):
    api: ClassVar[type] = ChatApi
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @property
    def prompts(self) -> list[dict]:
        return [{"messages": [m.to_pb() for m in self.messages]}]

    def wants_logprobs(self) -> bool:
        if self.top_logprobs:
            raise BadParameter(f"top_logprobs {self.top_logprobs}: the engine gives the chosen token's logprob "
                               "only; ask for 0", "top_logprobs")
        return bool(self.logprobs)


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a prompt, or messages rendered with the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True

    def chat(self) -> list[tuple[str, str]] | None:
        """The messages as (role, content), or None for a prompt."""
        if (self.prompt is None) == (self.messages is None):
            raise BadParameter("give exactly one of prompt and messages", "prompt")
        return None if self.messages is None else [(m.role, m.to_pb().content) for m in self.messages]


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[TokenId]


def parsed(model: type[BaseModel], body: bytes) -> BaseModel:
    """A request body (JSON) as `model`; what is wrong with it as a 400 naming the parameter."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise BadParameter(f"the body is not valid JSON: {first['msg']}", None) from None
        where, why = ".".join(str(part) for part in first["loc"]), first["msg"].removeprefix("Value error, ")
        raise BadParameter(f"{where or 'body'}: {why} (got {shown(first.get('input'))})",
                           str(first["loc"][0]) if first["loc"] else None) from None


def check_model(name: str | None, served: str) -> None:
    if name not in (None, served):
        raise NotFound(f"the model {shown(name)} does not exist here: this gateway serves {served!r}")


def refuse_not_honoured(body: SamplingRequest) -> None:
    extra = body.model_extra or {}
    for name, (harmless, why) in NOT_HONOURED.items():
        if name in extra and extra[name] not in harmless:
            raise BadParameter(f"{name}={shown(extra[name])} is not supported: {why}", name)


# --- request -> GenerateRequests ---

@dataclass(frozen=True)
class Generation:
    """What one HTTP request asks for: a GenerateRequest per choice (prompt-major, choice index =
    prompt * n + j), and how to answer."""

    api: type
    id: str
    created: int
    model: str
    requests: tuple[pb.GenerateRequest, ...]
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    tokens_as_ids: bool  # logprobs name each token `token_id:N`


def generation(body: SamplingRequest, model: str, max_tokens: int, end_ids: tuple[int, ...],
               logprobs: bool) -> Generation:
    refuse_not_honoured(body)
    api, n, prompts = body.api, body.n or 1, body.prompts
    if len(prompts) * n > MAX_GENERATIONS:
        raise BadParameter(f"{len(prompts)} prompts x n={n} is more than {MAX_GENERATIONS} choices", "n")
    request_id = f"{api.id_prefix}{uuid.uuid4().hex}"
    requests = tuple(pb.GenerateRequest(**prompt, sampling=sampling_of(body, max_tokens, end_ids, j, logprobs),
                                        skip_special_tokens=body.skip_special_tokens is not False,
                                        request_id=f"{request_id}-{i * n + j}")
                     for i, prompt in enumerate(prompts) for j in range(n))
    return Generation(api, request_id, int(time.time()), model, requests, n, bool(body.stream), body.include_usage,
                      logprobs, bool(body.return_tokens_as_token_ids))


def sampling_of(body: SamplingRequest, max_tokens: int, end_ids: tuple[int, ...], choice: int,
                logprobs: bool) -> pb.SamplingParams:
    seed = None if body.seed is None else (body.seed + choice) % (MAX_SEED + 1)
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    temperature = 1.0 if body.temperature is None else body.temperature
    return pb.SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_k=max(body.top_k or 0, 0),
                             top_p=body.top_p or 1.0, seed=seed, stop=stop, end_id=end_ids, return_logprobs=logprobs)


def max_tokens_of(body: SamplingRequest, default: int, max_seq_len: int | None) -> int:
    """The request's max_completion_tokens or max_tokens, else `default`; refused when no prompt
    could leave room for it."""
    name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    asked = getattr(body, name)
    if max_seq_len is not None and asked is not None and asked >= max_seq_len:
        raise BadParameter(f"{name} {asked} leaves no room for a prompt in the model's {max_seq_len} tokens "
                           f"(max_seq_len): ask for at most {max_seq_len - 1}", name)
    return asked or default


def token_id_names(ids) -> list[str]:
    """vLLM's `return_tokens_as_token_ids`: each token as `token_id:N`."""
    return [f"token_id:{i}" for i in ids]


def finish_reason(reason: int) -> str:
    if reason not in FINISH_REASON:
        raise Unavailable(f"the inference service ended the request early "
                          f"({pb.FinishReason.Name(reason).removeprefix('FINISH_REASON_').lower()}): retry it")
    return FINISH_REASON[reason]


# --- responses ---

def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict:
    return {"prompt_tokens": num_prompt_tokens, "completion_tokens": num_completion_tokens,
            "total_tokens": num_prompt_tokens + num_completion_tokens}


def response(g: Generation, choices: list[dict], usage_: dict) -> dict:
    return {"id": g.id, "object": g.api.object, "created": g.created, "model": g.model, "choices": choices,
            "usage": usage_}


def chunk(g: Generation, choices: list[dict], usage_: dict | None = None) -> dict:
    body = {"id": g.id, "object": g.api.chunk_object, "created": g.created, "model": g.model, "choices": choices}
    if g.include_usage:
        body["usage"] = usage_
    return body


def models(name: str, info: pb.ModelInfo | None, created: int) -> dict:
    card = {"id": name, "object": "model", "created": created, "owned_by": "dbrx-serve"}
    if info is not None:
        card["max_model_len"] = info.max_seq_len
    return {"object": "list", "data": [card]}
