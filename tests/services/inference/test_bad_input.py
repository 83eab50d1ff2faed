"""Bad requests are refused at once with a message that says what to fix, and
leave nothing behind in the engine."""

import json
import shutil
import struct

import pytest

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.shared.artifacts import MANIFEST, file_sha256
from dbrx_serve.shared.errors import InvalidInput


@pytest.mark.parametrize("params,message", [
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(top_p=0.0), r"top_p must lie in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must lie in \(0, 1\]"),
    (dict(top_k=-1), "top_k must be an integer >= 0"),
    (dict(seed=-3), "seed must be between"),
    (dict(stop=[""]), "stop strings must be non-empty"),
    (dict(stop=["x"] * 17), "at most 16 stop strings"),
    (dict(stop=["x" * 257]), "of at most 256 characters"),
    (dict(end_id=[-1]), "end_id must be an integer >= 0"),
])
def test_bad_sampling_params(params, message):
    with pytest.raises(InvalidInput, match=message):
        SamplingParams(**params)


@pytest.mark.parametrize("prompt,params,message", [
    ([], {}, "prompt is empty"),
    ("", {}, "prompt is empty"),
    ([1, -1], {}, "prompt id -1 is outside the vocabulary 0..100351"),
    ([1, 100352], {}, "prompt id 100352 is outside the vocabulary"),
    (list(range(129)), {}, "more than the engine's max_input_len 128"),
    ([1, 2], dict(max_new_tokens=255), "exceeds the engine's max_seq_len 256"),
])
def test_bad_requests_are_refused_with_what_to_fix(fp32_engine, prompt, params, message):
    with pytest.raises(InvalidInput, match=message):
        fp32_engine.add_request(prompt, SamplingParams(**params))
    assert fp32_engine.stats().waiting == 0


def test_a_bad_prompt_in_a_batch_withdraws_the_whole_batch(fp32_engine):
    with pytest.raises(InvalidInput, match="prompt 1|outside the vocabulary"):
        fp32_engine.generate([[1, 2, 3], [1, 999999]], SamplingParams(max_new_tokens=2))
    assert not fp32_engine.has_unfinished and fp32_engine.stats().kv_blocks_used == 0


def test_duplicate_request_ids_are_refused(fp32_engine):
    fp32_engine.add_request([1, 2], SamplingParams(max_new_tokens=1), request_id="same")
    try:
        with pytest.raises(InvalidInput, match="already in use"):
            fp32_engine.add_request([1, 2], SamplingParams(max_new_tokens=1), request_id="same")
    finally:
        fp32_engine.abort("same")


def test_runtime_limits_cannot_exceed_the_build(engine_dir):
    with pytest.raises(InvalidInput, match="exceeds the engine's built max_num_tokens 256"):
        Engine.from_dir(engine_dir("fp32"), max_num_tokens=1000)
    with pytest.raises(InvalidInput, match="unknown runtime limit"):
        Engine.from_dir(engine_dir("fp32"), max_seq_len=10)


def test_a_tampered_engine_is_refused(engine_dir, tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir("fp32"), copy)
    config = json.loads((copy / "config.json").read_text())
    config["build_config"]["max_seq_len"] = 4096
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="does not match the sha256|bytes, the manifest says"):
        Engine.from_dir(copy)
    with pytest.raises(InvalidInput, match="does not exist"):
        Engine.from_dir(tmp_path / "missing")


def test_an_engine_whose_rank_file_header_claims_a_huge_tensor_is_refused(engine_dir, tmp_path):
    """The rank file and its manifest entry both rewritten, so that sizes and sha256 agree: the
    header, whose tensor claims far more bytes than its offsets give it, is what is refused (not
    left for the weights' loader to allocate or fail on)."""
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir("fp32"), copy)
    header = json.dumps({"transformer.vocab_embedding.weight": {"dtype": "F32", "shape": [1 << 40, 1 << 40],
                                                                "data_offsets": [0, 16]}}).encode()
    rank = copy / "rank0.safetensors"
    rank.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    manifest = json.loads((copy / MANIFEST).read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "rank0.safetensors")
    entry.update(size=rank.stat().st_size, sha256=file_sha256(rank))
    (copy / MANIFEST).write_text(json.dumps(manifest))
    for checksums in (False, True):
        with pytest.raises(InvalidInput, match=r"rank0.safetensors: tensor 'transformer.vocab_embedding.weight' "
                                               r"claims shape \[1099511627776, 1099511627776\] of F32"):
            Engine.from_dir(copy, verify_checksums=checksums)


def test_a_multi_rank_engine_outside_an_mpi_world_is_refused_naming_both_sizes(engine_dir):
    """In a process no MPI launcher started (`dbrx run` and `dbrx serve inference` start the world)."""
    with pytest.raises(InvalidInput, match="has 2 ranks but this process is a world of 1 .*mpirun -n 2"):
        Engine.from_dir(engine_dir("tp2"))


@pytest.mark.parametrize("precision, layout, earlier", [("int4", "int4_tiles_v2", "plain"),
                                                      ("int4", "int4_tiles_v2", "int4_tiles"),
                                                      ("int8", "int8_tiles", "plain")])
def test_an_int_engine_of_an_earlier_layout_is_refused_with_a_rebuild(engine_dir, tmp_path, precision, layout,
                                                                      earlier):
    """int8 and int4 engines hold their weights in tiles (shared/tiles.py); one that says it holds the
    checkpoint's bytes, or int4 tiles of two's complement nibbles (earlier versions'), is refused before any
    weight loads."""
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir(precision), copy)
    config = json.loads((copy / "config.json").read_text())
    assert config["build_config"]["weight_layout"] == layout
    config["build_config"]["weight_layout"] = earlier
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match=f"weight_layout '{earlier}', where this runtime reads '{layout}' for "
                                           "this model's weights: build the engine again"):
        Engine.from_dir(copy, verify=False)
