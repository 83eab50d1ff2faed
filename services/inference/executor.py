"""What the engine steps (DESIGN.md's executor): the model runner of a one-rank engine, in this
process, or rank 0 of an MPI world, which sends each command to the other ranks (world.py) and
does its own share; the scheduler and the sampler never learn how many ranks there are.

    rank 0                                        every other rank: follow()
    Open(engine dir, limits)  ---- mpi4py --->    load its own rank file; all agree it loaded, profile
                                                  the largest step, agree on the KV pool (memory.py)
    Step(plan)                ---- mpi4py --->    its share of the step (parallel.py)
    logits of the sampled rows  <- torch.distributed -  the last pipeline stage's first rank
    Exit (rank 0's exit)      ---- mpi4py --->    leave
"""

import itertools
import logging
import os
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from dbrx_serve.shared.errors import DbrxServeError, InvalidInput
from dbrx_serve.shared.mapping import Mapping

from . import world as mpi_world
from .engine_dir import EngineDir, load_engine_dir
from .limits import EngineLimits
from .memory import free_device_memory
from .model_runner import ModelRunner
from .parallel import RankOfWorld
from .plan import StepPlan

log = logging.getLogger("dbrx_serve.inference")
EXECUTOR_IDS = itertools.count(1)


@dataclass(frozen=True)
class Open:
    executor_id: int
    engine_dir: str
    mapping: Mapping
    limits: EngineLimits
    device_type: str
    backend: str | None
    verify: bool
    verify_checksums: bool


@dataclass(frozen=True)
class Step:
    executor_id: int
    plan: StepPlan

    def pack(self) -> np.ndarray:
        """[executor_id, the packed plan]: broadcast as int32, no pickling."""
        return np.concatenate([np.array([self.executor_id], dtype=np.int32), self.plan.pack()])

    @classmethod
    def unpack(cls, packed: np.ndarray) -> "Step":
        return cls(int(packed[0]), StepPlan.unpack(packed[1:]))


class LocalExecutor:
    """A one-rank engine: the model runner in this process."""

    feeds_tokens = True  # run() takes a step's input ids from the device (the engine's lookahead)

    def __init__(self, runner: ModelRunner):
        self.runner = runner

    def run(self, plan: StepPlan, feed: torch.Tensor | None = None) -> torch.Tensor:
        return self.runner.run(plan, feed)

    def check(self) -> None:
        """Raises WorldLost once the executor can run no more steps (never, here)."""

    def on_lost(self, callback) -> None:
        """`callback()` runs (on another thread) when the executor can run no more steps (never, here)."""


class WorldExecutor:
    """Rank 0 of an MPI world: each step's plan goes to every rank, the logits come back here."""

    feeds_tokens = False  # every rank takes a step's input ids from its plan, broadcast from here

    def __init__(self, world: mpi_world.World, engine: EngineDir, limits: EngineLimits, device: torch.device,
                 backend: str | None, verify: tuple[bool, bool], sample=None):
        self.world, self.id = world, next(EXECUTOR_IDS)
        command = Open(self.id, str(engine.path), engine.mapping, limits, device.type, backend, *verify)
        self.runner = world.run(command, lambda: open_runner(world, command, engine, sample))
        weakref.finalize(self, world.release, self.id)
        runner = weakref.ref(self.runner)
        world.on_close(lambda: drop_graphs(runner()))

    def run(self, plan: StepPlan, feed: torch.Tensor | None = None) -> torch.Tensor:
        if feed is not None:
            raise ValueError("a multi-rank engine takes each step's input ids from its plan (feeds_tokens False)")
        return self.world.run(Step(self.id, plan).pack(), lambda: self.runner.parallel.step(self.runner, plan))

    def check(self) -> None:
        self.world.check()

    def on_lost(self, callback) -> None:
        self.world.on_lost(callback)


def open_executor(engine: EngineDir, limits: EngineLimits, device: torch.device, backend: str | None = None,
                  model=None, verify: tuple[bool, bool] = (True, False), sample=None):
    """The executor for this engine in this process: a local runner for a one-rank engine outside
    any MPI world, rank 0's side of the world for a multi-rank one launched with as many ranks.
    `verify`: how the other ranks check the engine directory (quick check, every sha256);
    `sample(logits)`: the sampler's costliest work, for the memory plan's profiling pass."""
    size = mpi_world.launched_size()
    if engine.world_size == 1 and size == 1:
        return LocalExecutor(ModelRunner(engine, limits, device, backend, model, sample=sample))
    if engine.world_size != size:
        message = mismatch(engine, size)
        mpi_world.refuse(message) if size > 1 else None
        raise InvalidInput(message)
    if model is not None:
        raise InvalidInput("a model given in memory runs on one rank only")
    return WorldExecutor(mpi_world.start(device.type), engine, limits, device, backend, verify, sample)


def mismatch(engine: EngineDir, size: int) -> str:
    ranks = f"{engine.path} has {engine.world_size} rank{'s' if engine.world_size > 1 else ''}"
    if not mpi_world.launched_by_mpi():
        return (f"{ranks} but this process is a world of 1 (no mpirun started it): start it with "
                f"`mpirun -n {engine.world_size} dbrx ...`, or with `dbrx run` or `dbrx serve inference`, "
                "which start the world themselves")
    return f"{ranks} but the MPI world has {size}: start it with mpirun -n {engine.world_size}"


def open_runner(world: mpi_world.World, command: Open, engine: EngineDir | None = None, sample=None) -> ModelRunner:
    """This rank's runner of the engine (every rank at once); a rank that fails to load tells the others,
    so that all raise the same InvalidInput. After the first agreement (every rank loaded) only the
    profiling pass runs before the second, and it raises no domain error: a rank that fails there
    ends the world, as a failed step does."""
    parallel = RankOfWorld(world, command.mapping)
    verify = command.verify and world.local_rank == 0  # once a host: rank 0 checked its own host's files
    try:
        engine = engine or load_engine_dir(command.engine_dir, verify, command.verify_checksums)
        if engine.mapping != command.mapping:
            raise InvalidInput(f"{engine.path} on rank {world.rank} has mapping {engine.mapping}, "
                               f"not rank 0's {command.mapping}")
        return ModelRunner(engine, command.limits, world.device(command.device_type), command.backend,
                           parallel=parallel, sample=sample)
    except Exception as error:
        if parallel.agreements == 0:  # the others wait for this rank's word that it loaded
            parallel.agree(None, error)
        raise


def follow(world: mpi_world.World) -> None:
    """Any rank but 0: run rank 0's commands until it says the world ends. A failed step ends this
    process (rank 0 notices, and the world ends); an engine that does not open is rank 0's error."""
    runners: dict[int, ModelRunner] = {}
    while not isinstance(command := world.receive(), mpi_world.Exit):
        if isinstance(command, mpi_world.Release):
            for executor_id in command.executor_ids:
                runners.pop(executor_id, None)
            free_device_memory()
        elif isinstance(command, Open):
            try:
                runners[command.executor_id] = open_runner(world, command)
            except DbrxServeError as error:
                log.info("rank %d: the engine did not open: %s", world.rank, error)
        else:
            run_step(runners, Step.unpack(command))
    for runner in runners.values():
        drop_graphs(runner)
    runners.clear()
    world.say_goodbye()


def run_step(runners: dict[int, ModelRunner], step: Step) -> None:
    runner = runners[step.executor_id]
    runner.parallel.step(runner, step.plan)


def drop_graphs(runner: ModelRunner | None) -> None:
    """Before the world ends: a runner's CUDA graphs go, with the NCCL work captured in them, and
    their memory; else the process group's teardown hangs in ncclCommDestroy (pytorch/pytorch#115388)."""
    if runner is not None and runner.graphs is not None:
        runner.graphs = None
        free_device_memory()


def follow_main() -> int:
    """The life of a rank other than 0 (`dbrx run` and `dbrx serve inference` become this)."""
    logging.basicConfig(format=f"%(asctime)s rank {mpi_world.launched_rank()} %(name)s %(levelname)s %(message)s")
    world = mpi_world.join()
    if world is None:  # rank 0 refused to start the world, and says why
        return 2
    try:
        follow(world)
    except BaseException:
        log.exception("rank %d failed: leaving the world", world.rank)
        logging.shutdown()
        os._exit(1)
    return 0


if __name__ == "__main__":  # a follower of a world whose rank 0 is some other program (tests)
    from dbrx_serve.services.inference import executor  # the module itself, whose Open wire.py decodes
    raise SystemExit(executor.follow_main())
