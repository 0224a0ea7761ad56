"""``--executor ray``: cells on a Ray cluster, or a local Ray runtime, one driver writing.

Shape (measured and argued in README "Running on a Ray cluster"):

- **Workers are actors**, one per slot: one GPU each on CUDA (``num_gpus=1``), else a CPU
  share (``TLBENCH_RAY_CPUS_PER_WORKER``, default 1 core, which is also the worker's torch
  thread count).  An actor keeps its :class:`~tlbench.run.runner.Runner` warm between cells:
  loaded data, built backbones, the frozen-prefix feature cache, layout trials.
- **Work is handed out by group** (tlbench.run.executors.groups): the cells that share a
  backbone build, a feature cache, a row's ``--lr auto`` choice or a ``pretrain:``
  checkpoint run in plan order on one worker, so that work is done once.  The driver
  sends one cell at a time, so it always knows which cell each worker is running.
- **The driver is the single writer**: workers return records; the driver appends them
  with :func:`tlbench.store.records.append_record` (one write, fsync), exactly as the serial
  runner does, so ``kill -9`` of the driver or of a worker loses no finished record and
  duplicates none.  A cell whose worker died is stored as ``failed`` with the reason
  (``failed`` cells run again next time); a fresh worker takes over the rest of its group.
  The driver also relays each row's LR choice to whichever worker runs the row next.
- Lifecycle hooks: ``cell_started`` and ``epoch_end`` run in the worker that trains the
  cell, ``cell_finished`` in the driver after the record is stored.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from tlbench.api import env
from tlbench.api.errors import Interrupted, TlbenchError
from tlbench.plan.settings import Cell
from tlbench.run import record as cell_record
from tlbench.run.executors.groups import GROUPINGS
from tlbench.run.executors.ray_worker import CellWorker
from tlbench.run.runner import Outcome, Runner
from tlbench.run.signals import SignalGuard
from tlbench.store.records import RECORDS_FILE, Record, append_record, finished_hashes, load_records
from tlbench.store.safeio import atomic_write
from tlbench.train import lr_search

POLL_SECONDS = 0.5  # how often the driver asks busy workers for their step progress
FORWARDED_ENV_PREFIX = "TLBENCH_"  # the driver's TLBENCH_* settings reach every worker


@dataclass(frozen=True)
class WorkerShape:
    """What one worker asks Ray for, and how many workers the run starts."""

    options: dict  # ray actor options: num_cpus, num_gpus, resources
    count: int
    threads: Optional[int]  # torch threads in the worker (CPU); None: leave as is (CUDA)


def worker_shape(
    cluster: dict, cuda: bool, groups: int, gpu_resource: str = "GPU", cpus: int = 1
) -> WorkerShape:
    """One worker per GPU on CUDA, one per ``cpus`` cores otherwise; never more workers
    than groups (a group runs on one worker).  ``gpu_resource`` names the resource a
    GPU worker holds: ``GPU``, or a custom resource standing in for one (tests)."""
    if cuda:
        slots = int(cluster.get(gpu_resource, 0))
        if slots < 1:
            raise TlbenchError(
                f"the Ray cluster has no {gpu_resource} for CUDA cells (resources: "
                f"{_resources_text(cluster)}); use --device cpu or add GPU nodes."
            )
        held = {"num_gpus": 1} if gpu_resource == "GPU" else {"resources": {gpu_resource: 1}}
        # num_cpus=0: a GPU worker must never wait for a CPU slot while its GPU idles
        return WorkerShape({**held, "num_cpus": 0}, min(slots, groups), None)
    slots = int(cluster.get("CPU", 0)) // cpus
    if slots < 1:
        raise TlbenchError(
            f"the Ray cluster has fewer than {cpus} CPUs for one worker (resources: "
            f"{_resources_text(cluster)})."
        )
    return WorkerShape({"num_cpus": cpus}, min(slots, groups), cpus)


def _resources_text(cluster: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(cluster.items()) if "node:" not in k)


def grouping_from_env() -> Callable[[list[Cell]], list[list[Cell]]]:
    """``TLBENCH_RAY_GROUPING``: ``data`` (default: per backbone, weights and dataset) or
    ``row`` (per leaderboard row: more parallel, each strategy fills its own cache)."""
    name = env.ray_grouping()
    if name not in GROUPINGS:
        raise TlbenchError(f"TLBENCH_RAY_GROUPING={name!r} is not one of: {', '.join(GROUPINGS)}.")
    return GROUPINGS[name]


class FlagGuard(SignalGuard):
    """SIGINT/SIGTERM only set a flag, which the driver's loop checks between Ray calls:
    an exception raised by a handler inside Ray's C code (``ray.wait``) comes out as a
    SystemError, not as :class:`Interrupted`.  Records are stored as in SignalGuard."""

    def _handle(self, signum: int, frame) -> None:
        self._restore()  # a second signal acts at once
        self._pending = signum

    def check(self) -> None:
        if self._pending is not None:
            raise Interrupted(self._pending)


@dataclass
class Slot:
    """One worker and what it is doing: the rest of its group, the cell in flight."""

    actor: object
    where: object  # ObjectRef of actor.where(): pid and node, for a death report
    queue: deque = field(default_factory=deque)
    cell: Optional[Cell] = None
    ref: object = None  # ObjectRef of the cell in flight
    poll: object = None  # ObjectRef of a pending progress() call
    steps: tuple[int, int] = (0, 0)


class RayExecutor:
    """Cells as Ray actor calls; see the module docstring for the shape and why."""

    name = "ray"

    def __init__(
        self,
        address: Optional[str] = None,
        gpu_resource: str = "GPU",
        grouping: Optional[Callable[[list[Cell]], list[list[Cell]]]] = None,
        cuda: Optional[bool] = None,
    ):
        self.address, self.gpu_resource = address, gpu_resource
        self.grouping = grouping or grouping_from_env()
        self.cuda = cuda  # None: as the runner's device (tests force the GPU path)
        self.cpus = env.ray_cpus_per_worker()
        self.shape: Optional[WorkerShape] = None  # known once a run starts

    def run(self, runner: Runner, cells: list[Cell], force: bool = False) -> Outcome:
        import ray

        started_here = self._connect(ray)
        try:
            return _Run(ray, self, runner, force).run(cells)
        finally:
            if started_here:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Join the cluster at ``--ray-address`` (``auto``: the one ``ray start`` made on
        this node), or start a local runtime with every CPU and GPU here; reuse Ray when
        this process already initialized it.  True when this call started it."""
        if ray.is_initialized():
            return False
        if self.address is None:  # Ray renices workers to 15: they are the work here
            os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        return True

    def actor_options(self, shape: WorkerShape) -> dict:
        forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
        runtime_env = {"env_vars": forwarded} if forwarded else None
        return {**shape.options, "max_concurrency": 2, "runtime_env": runtime_env}


class _Run:
    """One ``tlbench run`` through Ray: the driver's loop and its bookkeeping."""

    def __init__(self, ray, executor: RayExecutor, runner: Runner, force: bool):
        self.ray, self.executor, self.runner, self.force = ray, executor, runner, force
        self.outcome = Outcome()
        self.choices: dict[str, lr_search.SearchResult] = {}
        self.groups: deque = deque()
        self.slots: list[Slot] = []
        self.index: dict[str, int] = {}
        self.total = 0
        self.guard = FlagGuard()

    def run(self, cells: list[Cell]) -> Outcome:
        cells = self.runner.finalize(cells)
        records = [] if self.force else load_records(self.runner.directory)
        done = finished_hashes(records)
        self.choices.update(lr_search.searches_in(records))
        todo = []
        for cell in cells:
            (self.outcome.already_done if cell.config_hash in done else todo).append(cell)
        self.index = {c.config_hash: i for i, c in enumerate(cells)}
        self.total = len(cells)
        self.groups = deque(self.executor.grouping(todo))
        if not self.groups:
            return self.outcome
        try:
            with self.guard.active():
                self._start_workers()
                self._loop()
                self.guard.check()
        except Interrupted as exc:
            exc.message = self._interrupted_message(exc)
            raise
        finally:
            for slot in self.slots:
                self.ray.kill(slot.actor, no_restart=True)
        return self.outcome

    # ---- workers ----------------------------------------------------------------------
    def _start_workers(self) -> None:
        cuda = self.executor.cuda if self.executor.cuda is not None else self.runner.device.is_cuda
        shape = worker_shape(
            self.ray.cluster_resources(),
            cuda,
            len(self.groups),
            self.executor.gpu_resource,
            self.executor.cpus,
        )
        self.executor.shape = shape
        self.slots = [self._new_slot(shape) for _ in range(shape.count)]
        for slot in self.slots:
            self._feed(slot)

    def _new_slot(self, shape: WorkerShape) -> Slot:
        from tlbench.plugins import registry as plugin_registry
        remote = self.ray.remote(CellWorker).options(**self.executor.actor_options(shape))
        device = "cuda" if self.runner.device.is_cuda else "cpu"
        actor = remote.remote(
            plugin_registry.get_plugin_manager,  # as this process sees it (tests wrap it)
            device,
            self.runner.workspace.data_dir,
            self.runner.workspace.compile_model,
            shape.threads,
        )
        return Slot(actor, actor.where.remote())

    def _feed(self, slot: Slot) -> None:
        """Send the worker its next cell: the rest of its group, else the next group;
        a worker with nothing left to do is let go (its GPU or cores freed)."""
        if not slot.queue and self.groups:
            slot.queue = deque(self.groups.popleft())
        if not slot.queue:
            self.ray.kill(slot.actor, no_restart=True)
            return
        cell = slot.queue.popleft()
        slot.cell, slot.steps = cell, (0, 0)
        self.runner.progress.cell_started(cell, self.index[cell.config_hash], self.total)
        slot.ref = slot.actor.run_cell.remote(cell, self.choices.get(cell.row_hash))

    # ---- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        while busy := {slot.ref: slot for slot in self.slots if slot.ref is not None}:
            ready, _ = self.ray.wait(list(busy), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                self._collect(busy[ref])
            self._poll_steps()
            self.guard.check()

    def _collect(self, slot: Slot) -> None:
        cell, ref = slot.cell, slot.ref
        slot.cell = slot.ref = slot.poll = None
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            result = {"record": self._worker_died(cell, slot, exc)}
            slot.actor, slot.where = self._replacement(slot)
        except self.ray.exceptions.RayTaskError as exc:  # e.g. a cell_started hook raised
            result = {"record": self._failed(cell, f"{exc.cause!r}"[:300])}
        self._store(cell, result)
        self._feed(slot)

    def _replacement(self, slot: Slot):
        self.ray.kill(slot.actor, no_restart=True)
        fresh = self._new_slot(self.executor.shape)
        return fresh.actor, fresh.where

    def _store(self, cell: Cell, result: dict) -> None:
        progress = self.runner.progress
        if "skipped" in result:
            self.outcome.skipped.append((cell, result["skipped"]))
            progress.cell_finished(cell, None, f"skipped: {result['skipped']}")
            return
        record: Record = result["record"]
        if result.get("traceback"):
            record["traceback_file"] = self._save_traceback(cell, result["traceback"])
        with self.guard.deferred():  # a signal here waits until the record is stored
            append_record(self.runner.directory, record)
            self.outcome.ran.append(record)
        self.choices.update(lr_search.searches_in([record]))
        self.runner.hooks.cell_finished(cell=cell, record=record)
        progress.cell_finished(cell, record)

    def _poll_steps(self) -> None:
        """Step progress of the cells in flight, summed, for the steps bar."""
        for slot in self.slots:
            if slot.ref is None:
                continue
            if slot.poll is None:
                slot.poll = slot.actor.progress.remote()
                continue
            ready, _ = self.ray.wait([slot.poll], timeout=0)
            if ready:
                try:
                    slot.steps = tuple(self.ray.get(slot.poll))
                except self.ray.exceptions.RayError:
                    pass  # the worker died: its cell is reported by _collect
                slot.poll = None
        running = [slot.steps for slot in self.slots if slot.ref is not None]
        done, total = sum(s[0] for s in running), sum(s[1] for s in running)
        if total:
            self.runner.progress.step(done, total)

    # ---- records for cells that did not come back -----------------------------------
    def _worker_died(self, cell: Cell, slot: Slot, exc: BaseException) -> Record:
        try:
            where = self.ray.get(slot.where, timeout=1)
            who = f"pid {where['pid']} on {where['node']}"
        except Exception:  # noqa: BLE001 - the worker may have died before saying
            who = "pid unknown"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return self._failed(
            cell,
            f"WorkerDied: the Ray worker running this cell ({who}) died: {first} "
            "The next `tlbench run` runs this cell again.",
        )

    def _failed(self, cell: Cell, error: str) -> Record:
        return cell_record.failed(self.runner.identity(cell), error)

    def _save_traceback(self, cell: Cell, text: str) -> str:
        folder = self.runner.directory / "tracebacks"
        folder.mkdir(parents=True, exist_ok=True)
        return str(atomic_write(folder / f"{cell.config_hash}.txt", text))

    def _interrupted_message(self, exc: Interrupted) -> str:
        flight = [slot.cell.label() for slot in self.slots if slot.cell is not None]
        abandoned = f"abandoned the cells in flight ({'; '.join(flight)}); " if flight else ""
        return (
            f"interrupted by {exc.signame}: {abandoned}{len(self.outcome.ran)} cells finished "
            f"in this run and every finished record is kept in "
            f"{self.runner.directory / RECORDS_FILE}. "
            "To resume, run the same command again: recorded cells are skipped."
        )


__all__ = ["RayExecutor", "CellWorker", "WorkerShape", "worker_shape"]
