"""The request side of the engine: deadlines (a waiting request past its
deadline never reaches prefill; a running one frees its blocks at once), the
warm-up step, chat prompts, and loading: the quick check, the full one, the
log line, and KV scales refused as the builder refuses them."""

import json
import logging
import shutil
import time

import pytest

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.engine_dir import load_engine_dir
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.prompt import Chat
from dbrx_serve.services.inference.stop import FinishReason
from dbrx_serve.shared.errors import InvalidInput

LONG = SamplingParams(max_new_tokens=20, temperature=0)


def test_a_waiting_request_past_its_deadline_never_reaches_prefill(engine_dir):
    engine = Engine.from_dir(engine_dir("fp32"), max_batch_size=1)
    engine.add_request([1, 2, 3], LONG, "running")
    engine.step()
    deadline = time.monotonic() + 3600  # the clock is passed in: nothing here waits
    engine.add_request([4, 5, 6], LONG, "late", deadline=deadline)
    assert engine.expire(now=deadline - 1) == []
    [output] = engine.expire(now=deadline)
    assert (output.request_id, output.token_ids, output.finish_reason) == ("late", (), FinishReason.DEADLINE)
    while engine.has_unfinished:
        engine.step()
    stats = engine.stats()
    assert (stats.num_admitted, stats.num_expired, stats.kv_blocks_used) == (1, 1, 0)
    assert "late" not in engine.sequences


def test_a_running_request_past_its_deadline_frees_its_blocks_at_once(fp32_engine):
    deadline = time.monotonic() + 3600
    fp32_engine.add_request(list(range(1, 30)), LONG, "r", deadline=deadline)
    for _ in range(3):
        fp32_engine.step()
    assert fp32_engine.stats().kv_blocks_used > 0
    assert [o.finish_reason for o in fp32_engine.expire(now=deadline)] == [FinishReason.DEADLINE]
    assert fp32_engine.stats().kv_blocks_used == 0 and not fp32_engine.has_unfinished


def test_a_request_that_ends_before_its_deadline_is_not_expired_later(fp32_engine):
    deadline = time.monotonic() + 3600
    fp32_engine.generate([[1, 2]], SamplingParams(max_new_tokens=2, temperature=0))
    fp32_engine.add_request([1, 2], SamplingParams(max_new_tokens=2, temperature=0), "done", deadline=deadline)
    while fp32_engine.has_unfinished:
        fp32_engine.step()
    assert fp32_engine.expire(now=deadline) == []


def test_warm_up_runs_one_step_and_leaves_nothing_behind(engine_dir):
    engine = Engine.from_dir(engine_dir("fp32"))
    engine.warm_up()
    stats = engine.stats()
    assert (stats.num_admitted, stats.running, stats.waiting, stats.kv_blocks_used) == (1, 0, 0, 0)
    assert engine.sequences == {}


def test_a_chat_prompt_is_the_templates_ids_with_the_generation_prompt(fp32_engine):
    messages = [("system", "Be brief."), ("user", "What is AGI?")]
    want = fp32_engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert fp32_engine.prompts.ids(Chat(messages)) == want
    with pytest.raises(InvalidInput, match="the chat has no turns"):
        fp32_engine.prompts.ids(Chat([("system", "Be brief.")]))


def test_a_text_that_cannot_fit_is_refused_before_it_is_encoded(fp32_engine, monkeypatch):
    def never(*args):
        raise AssertionError("encoded a text that cannot fit")
    monkeypatch.setattr(fp32_engine.tokenizer, "encode_text", never)
    limit = 128 * fp32_engine.tokenizer.max_token_bytes
    with pytest.raises(InvalidInput, match=f"the prompt has {limit + 1} characters"):
        fp32_engine.prompts.ids("x" * (limit + 1))


def test_loading_logs_its_time_and_speed(engine_dir, caplog):
    with caplog.at_level(logging.INFO, logger="dbrx_serve.inference"):
        Engine.from_dir(engine_dir("fp32"))
    [line] = [r.getMessage() for r in caplog.records if "GB/s" in r.getMessage()]
    assert "checked against its manifest (sizes and headers)" in line and "weights loaded onto cpu" in line


def test_verify_checksums_finds_a_flipped_weight_the_quick_check_does_not(engine_dir, tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir("fp32"), copy)
    rank = copy / "rank0.safetensors"
    with open(rank, "r+b") as f:
        f.seek(rank.stat().st_size - 4)
        f.write(b"\x00\x00\x80\x7f")  # the last weight becomes +Inf, the size stays
    Engine.from_dir(copy)  # sizes and headers are right: the quick check passes
    with pytest.raises(InvalidInput, match="rank0.safetensors does not match the sha256"):
        Engine.from_dir(copy, verify_checksums=True)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "0"])
def test_the_runtime_refuses_kv_scales_the_builder_refuses(engine_dir, tmp_path, bad):
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir("int8kv"), copy)
    scales = json.loads((copy / "kv_cache_scales.json").read_text())
    text = json.dumps(scales).replace(json.dumps(scales["layers"][1]["v"]), bad, 1)
    (copy / "kv_cache_scales.json").write_text(text)
    with pytest.raises(InvalidInput, match="layer 1 needs positive finite 'k' and 'v' scales"):
        load_engine_dir(copy, verify=False)  # the manifest would refuse the changed file first
