"""Ray, for the work a run or a sweep spreads over a machine's cores and GPUs or over a cluster (--backend ray).

Ray is imported here only, and only when a command asks for it: the local backend, and everything else, runs without
it. `ray_session` connects to a cluster (--ray_address) or starts a Ray on this machine for the command, sized by
--workers x --threads; `ray_map` runs named jobs as Ray tasks, each with its resource request, and hands each result to
the caller as it arrives, so that a finished job is saved even when another one fails.
"""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .config import Config
from .errors import InputError

# a worker process that dies (a lost node, the kernel's OOM killer) is retried this often; an exception in the job's
# own code is not (it would fail again): it is reported with the job's name
SYSTEM_RETRIES = 2


class BackendError(InputError, RuntimeError):
    pass


def import_ray():
    try:
        import ray
    except ImportError:
        raise BackendError("--backend ray needs Ray: pip install 'nanocrystal[ray]' (or pip install 'ray[tune]')") \
            from None
    return ray


def check(cfg: Config) -> None:
    """What --backend ray needs, said before anything starts: Ray installed, and a GPU share for a GPU run (Ray hides
    the GPUs from a task that requests none)."""
    import_ray()
    if cfg.device.startswith("cuda") and not cfg.job_gpus:
        raise BackendError(f"--device {cfg.device} with --backend ray needs --job_gpus (e.g. 0.2: five folds share "
                           "one GPU; 1: a GPU each)")
    host, _, port = cfg.ray_address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():  # Ray itself would retry an address where nothing listens for minutes
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as error:
            raise BackendError(f"--ray_address {cfg.ray_address}: no Ray cluster answers there ({error})") from None


@contextlib.contextmanager
def ray_session(cfg: Config) -> Iterator[Any]:
    """Ray for the length of a command: the cluster at --ray_address, or a Ray of --workers x --threads CPUs on this
    machine, started here and stopped at the end. A Ray already initialised by the caller (a test, a sweep's trial) is
    used as it is and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if cfg.ray_address:
        options["address"] = cfg.ray_address
    else:
        options["num_cpus"] = cfg.workers * cpus_per_job(cfg)
        options["address"] = "local"  # a new Ray for this command, never a cluster found by RAY_ADDRESS
    try:
        ray.init(**options)
    except ConnectionError as error:
        raise BackendError(f"--ray_address {cfg.ray_address}: no Ray cluster answers there ({error})") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if not cfg.ray_address and cfg.job_gpus > gpus:  # a task would wait for a GPU this machine does not have
            raise BackendError(f"--job_gpus {cfg.job_gpus:g}: this machine's Ray has {gpus:g} GPUs")
        yield ray
    finally:
        ray.shutdown()


def cpus_per_job(cfg: Config) -> int:
    return max(1, cfg.threads)


def resources(cfg: Config) -> dict[str, float]:
    """A job's request: --threads CPUs and --job_gpus of a GPU (a fraction shares one: 0.2 puts five jobs on it)."""
    return {"num_cpus": cpus_per_job(cfg), "num_gpus": cfg.job_gpus}


@dataclass
class JobFailure:
    name: str
    error: BaseException


def ray_map(cfg: Config, jobs: list[tuple[str, Callable, tuple]], on_result: Callable[[str, Any], None]) -> None:
    """Run each (name, function, args) as a Ray task with `resources(cfg)`; `on_result(name, value)` in the driver
    as each one finishes, in the order they finish. When jobs fail, the others still finish and are handed over
    first; then the failures are raised together in the jobs' order, one line each with its job's name (BackendError
    for a lost worker or bad input, RuntimeError chained to the worker's traceback for a bug)."""
    if not jobs:
        return
    with ray_session(cfg) as ray:
        task = ray.remote(max_retries=SYSTEM_RETRIES, retry_exceptions=False, **resources(cfg))(call)
        pending = {task.remote(function, *args): (index, name) for index, (name, function, args) in enumerate(jobs)}
        failures = []
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index, name = pending.pop(ready)
            try:
                value = ray.get(ready)
            except Exception as error:  # noqa: BLE001 - every failure is reported once all jobs have ended
                failures.append((index, JobFailure(name, error)))
                continue
            on_result(name, value)
    if failures:
        raise_failures(ray, [failure for _, failure in sorted(failures, key=lambda item: item[0])])


def call(function: Callable, *args):
    """The body of every Ray task: one remote function for jobs of any function."""
    return function(*args)


def raise_failures(ray, failures: list[JobFailure]) -> None:
    lines = []
    bug = None
    for failure in failures:
        error = failure.error
        cause = getattr(error, "cause", None) if isinstance(error, ray.exceptions.RayTaskError) else error
        if isinstance(cause, InputError):
            lines.append(f"{failure.name}: {cause}")
        elif isinstance(error, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                                ray.exceptions.RaySystemError)):
            lines.append(f"{failure.name}: its Ray worker died {SYSTEM_RETRIES + 1} times ({type(error).__name__}); "
                         "--resume runs what is missing")
        else:
            what = f"{type(cause).__name__}: {cause}" if cause is not None else type(error).__name__
            lines.append(f"{failure.name}: failed on a Ray worker: {what.splitlines()[0]}")
            bug = bug or error
    message = "\n".join(lines)
    if bug is not None:  # a bug keeps its traceback (the worker's is in the message Ray gives)
        raise RuntimeError(message) from bug
    raise BackendError(message)
