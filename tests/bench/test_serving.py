"""bench/serving.py: its stream check can fail (a token lost, duplicated, reordered or replaced
is a mismatch; a stream that forks from its lone run at a near-tie and then goes on as a lone run
of its own tokens would is not), and a small run of the script on both paths (real servers it
starts itself) completes every request, every stream checked, the KV pool empty after each level
and the servers up. No timing is asserted."""

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serving.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("serving_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serving = load_bench()
PROMPT = serving.Prompt((5, 6, 7), 10)


def next_token(context: list[int]) -> tuple[int, float]:
    """A stand-in model: the greedy token after `context` and its logprob."""
    token = (sum(context) * 7 + len(context)) % 1000
    return token, -1.0 - (token * 37 % 1000) / 1000


def lone_record(prompt) -> "serving.Record":
    context, record = list(prompt.ids), serving.Record(0.0)
    for _ in range(prompt.max_new_tokens):
        token, logprob = next_token(context)
        context.append(token)
        record.token_ids.append(token)
        record.logprobs.append(logprob)
    return record


async def lone(prompt):
    return lone_record(prompt)


def stream(ids: list[int], logprobs: list[float], num_counted: int | None = None) -> "serving.Record":
    return serving.Record(0.0, token_ids=list(ids), logprobs=list(logprobs), num_counted=num_counted)


def verdict(record) -> tuple[str, str]:
    return asyncio.run(serving.verdict(PROMPT, record, lone))


def edited(edit) -> "serving.Record":
    """The lone run with `edit` applied to its (id, logprob) pairs."""
    want = lone_record(PROMPT)
    pairs = edit(list(zip(want.token_ids, want.logprobs)))
    return stream([i for i, _ in pairs], [p for _, p in pairs])


def test_a_stream_equal_to_its_lone_run_is_identical():
    want = lone_record(PROMPT)
    assert verdict(stream(want.token_ids, want.logprobs, num_counted=10)) == ("identical", "")


@pytest.mark.parametrize("edit", [
    lambda p: p[:3] + p[4:],  # lost
    lambda p: p[:4] + p[3:],  # duplicated
    lambda p: p[:3] + [p[4], p[3]] + p[5:],  # reordered
    lambda p: p[:9],  # the last lost
    lambda p: p[:3] + [(p[3][0] + 1, p[3][1])] + p[4:],  # replaced, with its logprob: the rest goes on from the true one
])
def test_a_token_lost_duplicated_reordered_or_replaced_is_a_mismatch(edit):
    kind, why = verdict(edited(edit))
    assert kind == "mismatched" and why


def test_a_stream_whose_token_count_is_not_the_servers_is_a_mismatch():
    want = lone_record(PROMPT)
    assert verdict(stream(want.token_ids, want.logprobs, num_counted=11))[0] == "mismatched"


def test_a_fork_then_what_a_lone_run_of_its_own_tokens_gives_is_a_near_tie():
    want = lone_record(PROMPT)
    forked = want.token_ids[:3] + [want.token_ids[3] + 1]
    rest = lone_record(serving.continued(PROMPT, forked))
    for gap in (1e-4, 0.1):  # a near-tie of the greedy token; one inside the model (the logits moved more)
        got = stream(forked + rest.token_ids, want.logprobs[:3] + [want.logprobs[3] + gap] + rest.logprobs)
        assert verdict(got) == ("near_tie", "")
    wrong = stream(forked + rest.token_ids[:1] + [rest.token_ids[1] + 1] + rest.token_ids[2:],
                   want.logprobs[:3] + [want.logprobs[3] + 0.1] + rest.logprobs)
    assert verdict(wrong)[0] == "mismatched"  # the fork goes on, but not as a lone run would


def test_a_last_token_unlike_a_lone_runs_is_a_near_tie_only_within_the_tie():
    want = lone_record(PROMPT)
    last = want.token_ids[:9] + [want.token_ids[9] + 1]
    assert verdict(stream(last, want.logprobs[:9] + [want.logprobs[9] + 1e-4]))[0] == "near_tie"
    assert verdict(stream(last, want.logprobs[:9] + [want.logprobs[9] + 0.1]))[0] == "mismatched"


def test_a_small_run_on_grpc_and_the_gateway_completes_and_matches_every_stream():
    levels = ["1", "16"]
    out = subprocess.run([sys.executable, str(BENCH), "--levels", *levels, "--num_distinct", "8", "--input_len", "4",
                          "24", "--output_len", "4", "12", "--min_requests", "16", "--max_batch_size", "16"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["servers"]["alive_after"] is True and set(result["paths"]) == {"grpc", "gateway"}
    for path, by_level in result["paths"].items():
        assert list(by_level) == levels
        for level, by_mode in by_level.items():
            assert list(by_mode) == ["concurrency", "poisson"]
            for report in by_mode.values():
                streams = report["streams"]
                assert report["failed"] == 0 and report["completed"] == report["requests"] >= 16, (path, level, report)
                assert streams["mismatched"] == 0, (path, level, streams)
                assert streams["identical"] + streams["near_tie"] == report["completed"]
                assert report["kv_pool"]["empty"] and report["serving_after"], (path, level, report)
                assert report["output_tokens"] > 0 and report["ttft_ms"]["p99"] is not None
    assert result["totals"]["failed"] == result["totals"]["mismatched"] == 0
