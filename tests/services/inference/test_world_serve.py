"""Every parallel mapping served as an MPI world of 2 or 4 CPU processes (`dbrx serve inference`
starting its own world, or under `mpiexec -n WORLD`): `dbrx run --server ... --output_csv` gets the
greedy tokens of the one-rank engine and of transformers; SIGTERM ends the world (exit 0) and no
process is left behind. Seeded sampling gives the one-rank engine's tokens and logprobs on a
vocabulary that tp2 pads (the zero rows past it are cut before sampling)."""

from pathlib import Path

import grpc
import pytest

from dbrx_serve.cli.main import main
from dbrx_serve.services.builder.build import build
from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

from .conftest import LIMITS
from .multirank import (MAX_NEW, NEVER_SAMPLED, WAIT, WORLD_ENGINES, assert_all_gone, assert_same_as,
                        one_rank_and_transformers_ids, read_ids, served_world, write_prompts)
from .served import request, stub

ODD_VOCABULARY = 7  # tp2 shards of ceil(7 / 2) = 4 rows: one zero row past the vocabulary, which, uncut,
ODD_PROMPTS = [[1, 2, 3, 4], [6, 0, 5], [3, 3, 1, 0, 2, 6]]  # would be sampled and shift logprobs by ~0.1
LOGPROB_NOISE = 1e-2  # float32 sums in another order: 1.7e-4 seen

UNDER_MPIEXEC = {"ep2", "tp2pp2"}  # started by `mpiexec -n WORLD`, as a user would; the others start their own


@pytest.fixture(scope="module")
def expected(fp32_engine, banned):
    return one_rank_and_transformers_ids(fp32_engine, banned)


@pytest.mark.timeout(3 * WAIT)
@pytest.mark.parametrize("name", list(WORLD_ENGINES))
def test_a_world_serves_the_one_rank_engines_greedy_tokens(name, engine_dir, expected, reference_model, banned,
                                                            tmp_path, capsys):
    ranks = WORLD_ENGINES[name] if name in UNDER_MPIEXEC else None
    with served_world(engine_dir(name), ranks) as (process, address, world):
        with grpc.insecure_channel(address) as channel:
            info = stub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=WAIT)
        assert main(["run", "--server", address, "--max_output_len", str(MAX_NEW), "--end_id", str(NEVER_SAMPLED),
                     "--input_file", str(write_prompts(tmp_path / "in.csv")),
                     "--output_csv", str(tmp_path / "out.csv")]) == 0
        process.terminate()
        assert process.wait(WAIT) == 0
        assert_all_gone(world)
    assert info.mapping.tp_size * info.mapping.pp_size == WORLD_ENGINES[name]
    assert_same_as(expected, read_ids(tmp_path / "out.csv"), reference_model, banned)


@pytest.fixture(scope="module")
def odd_vocabulary_engines(tmp_path_factory) -> dict[int, Path]:
    """A tiny DBRX of ODD_VOCABULARY ids (no tokenizer) as a one-rank and a tp2 engine."""
    root = tmp_path_factory.mktemp("odd-vocabulary")
    save_tiny_model(root / "model", TinySpec(vocab_size=ODD_VOCABULARY, seed=5), tokenizer=False)
    for tp in (1, 2):
        convert(ConvertOptions(str(root / "model"), str(root / f"ckpt{tp}"), dtype="float32", tp_size=tp))
        build(BuildOptions(str(root / f"ckpt{tp}"), str(root / f"engine{tp}"), **LIMITS))
    return {tp: root / f"engine{tp}" for tp in (1, 2)}


@pytest.mark.timeout(3 * WAIT)
def test_seeded_sampling_on_tp2_gives_the_one_rank_tokens_and_logprobs_with_the_padding_cut(
        odd_vocabulary_engines):
    sampling = dict(temperature=1.0, top_k=0, seed=7, return_logprobs=True)
    with served_world(odd_vocabulary_engines[2]) as (process, address, world):
        with grpc.insecure_channel(address) as channel:
            served = [stub(channel).Generate(request(p, MAX_NEW, **sampling), timeout=WAIT) for p in ODD_PROMPTS]
        process.terminate()
        assert process.wait(WAIT) == 0
        assert_all_gone(world)
    one_rank = Engine.from_dir(odd_vocabulary_engines[1])
    params = SamplingParams(max_new_tokens=MAX_NEW, top_p=1.0, **sampling)
    for prompt, response in zip(ODD_PROMPTS, served):  # one at a time on both sides, as they were served
        alone = one_rank.generate([prompt], params)[0]
        assert list(response.output_ids) == list(alone.output_ids) and len(alone.output_ids) == MAX_NEW
        assert max(abs(a - b) for a, b in zip(response.logprobs, alone.logprobs)) < LOGPROB_NOISE
