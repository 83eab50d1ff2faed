"""The gateway with OpenAI's own client: completions and chat completions,
unary and streamed, equal the gRPC InferenceService's own text and tokens
for the same request (each run alone, so the batch is the same); stream
chunks concatenate to the unary text and every stream ends with [DONE];
n choices with a seed are the seeds seed+j run alone; stop strings cut the
text; usage counts the service's tokens; logprobs name tokens `token_id:N`
when asked, with no tokenizer service; the side endpoints answer."""

import grpc
import httpx
import pytest

from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc as pb_grpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from dbrx_serve.services.gateway.config import GatewayConfig

from .served import API_KEY, WAIT, client, events, gateway_server, post

FINISH = {pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_END_ID: "stop", pb.FINISH_REASON_STOP: "stop"}
CHATS = [[("user", "Hello")],
         [("system", "You are helpful."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "What is AGI?")]]


def grpc_generate(address: str, prompt, max_new_tokens: int = 12, **sampling) -> pb.GenerateResponse:
    """The inference service's own answer (skip_special_tokens as the gateway's default)."""
    sampling = pb.SamplingParams(max_new_tokens=max_new_tokens, **{"temperature": 0, **sampling})
    fields = ({"text": prompt} if isinstance(prompt, str) else
              {"messages": [tokenizer_pb2.ChatMessage(role=r, content=c) for r, c in prompt]}
              if isinstance(prompt[0], tuple) else {"input_ids": prompt})
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.InferenceServiceStub(channel).Generate(
            pb.GenerateRequest(**fields, sampling=sampling, skip_special_tokens=True), timeout=WAIT)


def token_texts(address: str, ids) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        request = tokenizer_pb2.DecodeRequest(sequences=[tokenizer_pb2.TokenIds(ids=[i]) for i in ids])
        return list(tokenizer_pb2_grpc.TokenizerServiceStub(channel).Decode(request, timeout=WAIT).texts)


def messages(chat) -> list[dict]:
    return [{"role": role, "content": content} for role, content in chat]


def usage_of(want: pb.GenerateResponse) -> dict:
    n, m = want.usage.prompt_tokens, len(want.output_ids)
    return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


@pytest.mark.parametrize("prompt", ["The quick brown fox", [10, 20, 30, 40]])
def test_a_completion_unary_and_streamed_equals_the_grpc_services_own(stack, prompt):
    want = grpc_generate(stack.inference.address, prompt, return_logprobs=True)
    got = client(stack.url).completions.create(model="dbrx", prompt=prompt, max_tokens=12, temperature=0, logprobs=0)
    choice = got.choices[0]
    assert choice.text == want.text and choice.finish_reason == FINISH[want.finish_reason]
    assert choice.logprobs.tokens == token_texts(stack.tokenizer, want.output_ids)
    assert choice.logprobs.token_logprobs == pytest.approx(list(want.logprobs), abs=1e-5)
    assert got.usage.model_dump(exclude_none=True) == usage_of(want)
    stream = events(stack.url, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                                    "stream_options": {"include_usage": True}})
    assert stream[-1] == "[DONE]" and "[DONE]" not in stream[:-1]
    chunks, usage = stream[:-2], stream[-2]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want.text
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == choice.finish_reason
    assert all(c["usage"] is None for c in chunks) and usage["choices"] == [] and usage["usage"] == usage_of(want)


@pytest.mark.parametrize("chat", CHATS)
def test_a_chat_completion_unary_and_streamed_equals_the_grpc_services_own(stack, chat):
    want = grpc_generate(stack.inference.address, chat, return_logprobs=True)
    openai = client(stack.url)
    got = openai.chat.completions.create(model="dbrx", messages=messages(chat), max_tokens=12, temperature=0,
                                         logprobs=True)
    choice = got.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", want.text)
    assert choice.finish_reason == FINISH[want.finish_reason]
    assert [t.token for t in choice.logprobs.content] == token_texts(stack.tokenizer, want.output_ids)
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx(list(want.logprobs), abs=1e-5)
    assert got.usage.model_dump(exclude_none=True) == usage_of(want)
    chunks = list(openai.chat.completions.create(model="dbrx", messages=messages(chat), max_completion_tokens=12,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == want.text
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(exclude_none=True) == usage_of(want)
    assert events(stack.url, "/v1/chat/completions", {"messages": messages(chat), "max_tokens": 3})[-1] == "[DONE]"


def test_logprobs_with_tokens_as_token_ids_need_no_tokenizer_service(stack):
    want = grpc_generate(stack.inference.address, [10, 20, 30], return_logprobs=True)
    with gateway_server(GatewayConfig(inference=(stack.inference.address,), api_key=API_KEY)) as url:
        body = {"prompt": [10, 20, 30], "max_tokens": 12, "temperature": 0, "logprobs": 0}
        refused = post(url, "/v1/completions", body)
        stream = events(url, "/v1/completions", {**body, "return_tokens_as_token_ids": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "logprobs"
    chunks = [c["choices"][0]["logprobs"] for c in stream[:-1]]
    assert [t for c in chunks for t in c["tokens"]] == [f"token_id:{i}" for i in want.output_ids]
    assert [p for c in chunks for p in c["token_logprobs"]] == pytest.approx(list(want.logprobs), abs=1e-5)


SAMPLED = dict(temperature=0.9, top_p=0.95, seed=1234)


def test_n_completions_with_a_seed_are_the_seeds_seed_plus_j_each_run_alone(stack):
    prompt = "Born in north-east France, Soyer trained as a"
    got = client(stack.url).completions.create(model="dbrx", prompt=prompt, max_tokens=10, n=3,
                                               extra_body={"top_k": 50}, **SAMPLED)
    wants = [grpc_generate(stack.inference.address, prompt, 10, top_k=50, **{**SAMPLED, "seed": 1234 + j})
             for j in range(3)]
    assert [c.index for c in got.choices] == [0, 1, 2]
    assert [c.text for c in got.choices] == [w.text for w in wants]
    assert len({w.text for w in wants}) > 1  # three samples, not one
    assert got.usage.prompt_tokens == wants[0].usage.prompt_tokens  # the prompt counted once
    assert got.usage.completion_tokens == sum(len(w.output_ids) for w in wants)


def test_n_streamed_chat_choices_concatenate_to_their_unary_texts(stack):
    openai, request = client(stack.url), dict(model="dbrx", messages=messages(CHATS[1]), max_tokens=10, n=3,
                                              **SAMPLED)
    unary = openai.chat.completions.create(**request)
    texts, roles, finishes = [""] * 3, [], {}
    for chunk in openai.chat.completions.create(**request, stream=True):
        (choice,) = chunk.choices
        roles += [choice.index] if choice.delta.role else []
        texts[choice.index] += choice.delta.content or ""
        finishes[choice.index] = choice.finish_reason or finishes.get(choice.index)
    assert sorted(roles) == [0, 1, 2]
    assert texts == [c.message.content for c in unary.choices]
    assert finishes == {c.index: c.finish_reason for c in unary.choices}


def test_several_prompts_are_choices_in_prompt_order_each_prompt_counted_once(stack):
    prompts = ["The quick brown fox", "What is AGI?"]
    got = client(stack.url).completions.create(model="dbrx", prompt=prompts, max_tokens=6, temperature=0, n=2)
    wants = [grpc_generate(stack.inference.address, p, 6) for p in prompts]
    assert [c.text for c in got.choices] == [w.text for w in wants for _ in range(2)]
    assert got.usage.prompt_tokens == sum(w.usage.prompt_tokens for w in wants)
    assert got.usage.completion_tokens == 2 * sum(len(w.output_ids) for w in wants)


def test_stop_strings_cut_the_text_before_them_as_the_grpc_service_does(stack):
    prompt = "Born in north-east France, Soyer trained as a"
    full = grpc_generate(stack.inference.address, prompt, 20).text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    want = grpc_generate(stack.inference.address, prompt, 20, stop=[stop, "never-seen"])
    assert want.text == full[:full.find(stop)] and want.finish_reason == pb.FINISH_REASON_STOP
    openai = client(stack.url)
    got = openai.completions.create(model="dbrx", prompt=prompt, max_tokens=20, temperature=0,
                                    stop=[stop, "never-seen"])
    assert (got.choices[0].text, got.choices[0].finish_reason) == (want.text, "stop")
    assert got.usage.completion_tokens == len(want.output_ids)
    streamed = openai.completions.create(model="dbrx", prompt=prompt, max_tokens=20, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want.text


def test_models_tokenize_detokenize_version_and_metrics(stack):
    openai = client(stack.url)
    (model,) = openai.models.list().data
    assert (model.id, model.owned_by, model.max_model_len) == ("dbrx", "dbrx-serve", 256)
    tokens = post(stack.url, "/tokenize", {"prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] == 256
    assert post(stack.url, "/detokenize", {"tokens": tokens["tokens"]}).json() == {"prompt": "Hello world"}
    chat = post(stack.url, "/tokenize", {"messages": messages(CHATS[0])}).json()
    assert chat["count"] == grpc_generate(stack.inference.address, CHATS[0], 1).usage.prompt_tokens
    assert httpx.get(f"{stack.url}/version").json()["version"]
    metrics = httpx.get(f"{stack.url}/metrics").text
    for name in ("dbrx:time_to_first_token_seconds", "dbrx:time_per_output_token_seconds",
                 "dbrx:e2e_request_latency_seconds"):
        assert float(metric(metrics, f"{name}_count")) > 0
    assert float(metric(metrics, 'dbrx:http_requests_total{method="POST",route="/tokenize",status="200"}')) >= 2


def metric(text: str, name: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " "))


def test_the_api_key_is_required_on_v1_and_tokenize_but_not_on_health(stack):
    for key in ("wrong", None):
        for path in ("/v1/completions", "/tokenize"):
            refused = post(stack.url, path, {"prompt": "Hi"}, api_key=key)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{stack.url}/v1/models").status_code == 401
    assert httpx.get(f"{stack.url}/health").status_code == 200
