"""Running work on a Ray cluster (the optional extra ``pip install -e ".[ray]"``): the command-line options, joining
or starting the cluster, and how many workers of what size it holds.

Ray is imported only here and only when ``--ray`` is given, so everything else works without it. One worker per
GPU when the cluster has GPUs, else one per ``--ray-cpus-per-worker`` CPUs; each worker is an actor that keeps the
network loaded between the batches it is given, and Ray restarts it and retries its batch if its process dies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from d2sfm.errors import D2sfmError

log = logging.getLogger("d2sfm")

LOCAL = "local"
# --ray-workers: each worker is a process holding the network; past this many the scheduling and the shards (one
# HDF5 file each) cost more than they gain, on any cluster.
MAX_RAY_WORKERS = 1024
DEFAULT_BATCH_IMAGES = 8  # extraction: enough to amortise scheduling, few enough to balance the workers
DEFAULT_BLOCK_PAIRS = 256  # matching: pairs per task, sorted by image so a worker reads each image once per block


def start_ray(address: str):
    """Join the cluster at ``address`` or start a local one; returns the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise D2sfmError("--ray needs Ray, which is not installed: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == LOCAL else address, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise D2sfmError(f"--ray {address}: cannot join the Ray cluster ({first}); start it with "
                             "'ray start --head' or omit the address for a local one") from None
    return ray


@dataclass
class WorkerShape:
    count: int
    cpus: int
    gpus: int  # 0 or 1 per worker

    def actor_options(self) -> dict:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}

    def describe(self) -> str:
        return f"{self.count} Ray workers, " + ("1 GPU each" if self.gpus else f"{self.cpus} CPU each, no GPU")

    def device(self) -> str:
        """The device a worker of this shape runs on. Told, not guessed in the worker: Ray shows an actor given a
        GPU that GPU as cuda:0, but one given none may still see every GPU of its node (recent Ray no longer hides
        them), and CPU-shaped workers guessing 'cuda' would all crowd onto one."""
        return "cuda" if self.gpus else "cpu"


def worker_shape(ray, workers: int | None, cpus_per_worker: int, address: str = LOCAL) -> WorkerShape:
    """One worker per GPU if the cluster has any, else one per ``cpus_per_worker`` CPUs (or ``workers``). More
    workers than the cluster can hold would wait for ever: an error on the local cluster, a warning on a joined
    one (an autoscaling cluster may still grow to hold them)."""
    if cpus_per_worker < 1 or (workers is not None and workers < 1):
        raise D2sfmError("--ray-workers and --ray-cpus-per-worker must be at least 1")
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if gpus:
        shape = WorkerShape(workers or gpus, cpus_per_worker, 1)
    else:
        if cpus < cpus_per_worker:
            raise D2sfmError(f"the Ray cluster has {cpus} CPUs, fewer than --ray-cpus-per-worker {cpus_per_worker}")
        shape = WorkerShape(workers or max(1, cpus // cpus_per_worker), cpus_per_worker, 0)
    kind, have, each = ("GPU", gpus, 1) if shape.gpus else ("CPU", cpus, cpus_per_worker)
    if shape.count * each > have:
        message = f"--ray-workers {shape.count} needs {shape.count * each} {kind}s and the Ray cluster has {have}"
        if address == LOCAL:
            raise D2sfmError(f"{message}: ask for at most {have // each} workers")
        log.warning(f"  warning: {message}; the workers beyond it wait until the cluster grows")
    return shape


def balanced_batch(items: int, requested: int, workers: int, floor: int = 1) -> int:
    """The batch size to cut ``items`` into: ``requested`` at most, but small enough that every worker gets about
    four batches (a last batch finishing alone then leaves the others idle for a short while only)."""
    return max(1, min(requested, max(floor, -(-items // (4 * workers)))))


def shard_folder(output: Path) -> Path:
    """Where the workers of a run writing ``output`` keep their shards (one HDF5 file each: HDF5 has one writer)."""
    return output.with_name(output.name + ".shards")


def shard_path(output: Path, worker: int) -> Path:
    return shard_folder(output) / f"worker-{worker}.h5"


def discard_shards(output: Path) -> None:
    """Delete the shards an earlier run left (for --overwrite)."""
    for shard in shard_folder(output).glob("worker-*.h5"):
        shard.unlink()


def collect_left_shards(output: Path, copy: Callable[[Path], int], what: str) -> int:
    """Before a run: move what an interrupted run left in its shards into ``output`` and say so; returns how
    many entries moved."""
    recovered = collect_shards(output, copy)
    if recovered:
        log.info(f"  collected {recovered} {what}")
    return recovered


def collect_shards(output: Path, copy: Callable[[Path], int]) -> int:
    """Move every shard's entries into ``output`` with ``copy(shard)`` (which writes the entries ``output`` lacks,
    atomically each, and returns how many), deleting each shard once copied; returns how many entries moved."""
    folder = shard_folder(output)
    moved = 0
    for shard in sorted(folder.glob("worker-*.h5")):
        moved += copy(shard)
        shard.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return moved


def run_on_workers(ray, actors: list, submit: Callable, batches: list, description: str, unit: str,
                   shards: Path, progress: bool = True) -> list[tuple[str, str | None]]:
    """Hand ``batches`` to idle ``actors`` (``submit(actor, batch)`` returns a Ray reference to a list of
    (item, error or None)) until all are done, with a progress bar; then stop the actors. Returns every result."""
    from tqdm import tqdm

    running: dict = {}
    idle, pending, results = list(actors), list(batches), []
    with tqdm(total=sum(len(b) for b in batches), desc=description, unit=unit, disable=not progress) as bar:
        while pending or running:
            while idle and pending:
                actor = idle.pop()
                running[submit(actor, pending.pop(0))] = actor
            done, _ = ray.wait(list(running), num_returns=1)
            for reference in done:
                idle.append(running.pop(reference))
                try:
                    batch_results = ray.get(reference)
                except ray.exceptions.RayError as error:  # a bug or a bad file in a worker, not a lost process
                    cause = getattr(error, "cause", None) or error
                    raise D2sfmError(f"a Ray worker failed: {str(cause).strip().splitlines()[-1]}; finished work "
                                     f"is kept in {shards}, rerun the same command to resume") from None
                results.extend(batch_results)
                bar.update(len(batch_results))
    for actor in actors:
        ray.kill(actor)
    return results


def run_sharded(address: str, workers: int | None, cpus_per_worker: int, output: Path, actor_class: type,
                actor_arguments: Callable[[str, int, str], tuple], items: list, batch_size: int, submit: Callable,
                description: str, unit: str, progress: bool = True, min_batch: int = 1) -> list:
    """The dispatch that extraction and matching share: join or start the cluster, start one ``actor_class`` per
    worker (constructed with ``actor_arguments(its shard path, its threads, its device)``; restarted by Ray if its
    process dies, its task retried), and hand it ``items`` in balanced batches (``submit(actor, batch)``). Returns
    every result; the shards are left for ``collect_shards``."""
    if batch_size < 1:
        raise D2sfmError("--ray-batch must be at least 1")
    ray = start_ray(address)
    shape = worker_shape(ray, workers, cpus_per_worker, address)
    shard_folder(output).mkdir(exist_ok=True)
    remote = ray.remote(max_restarts=-1, max_task_retries=-1)(actor_class)
    actors = [remote.options(**shape.actor_options()).remote(*actor_arguments(str(shard_path(output, index)),
                                                                              shape.cpus, shape.device()))
              for index in range(shape.count)]
    size = balanced_batch(len(items), batch_size, shape.count, min_batch)
    batches = [items[start:start + size] for start in range(0, len(items), size)]
    return run_on_workers(ray, actors, submit, batches, f"{description} ({shape.describe()})", unit,
                          shard_folder(output), progress)
