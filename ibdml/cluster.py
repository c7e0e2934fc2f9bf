"""Where many runs run: Ray, started on this machine or joined on a cluster (docs/scale-out.md).

ibdml schedules nothing itself. `ray_session` starts a local Ray on this machine's cores (no
dashboard) and stops it afterwards, or joins the cluster at `address` (`ray start --head` on its
head node). `run_tasks` runs one function over many argument tuples as Ray tasks, each asking for
the CPUs and GPUs it needs, and returns their results in order; Ray places them. A search
(steps/sweep.py) uses Ray Tune on the same session.

Ray is imported only here and in steps/sweep.py, and only when called: `ibdml --help` and a
single run never import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# Seconds to wait for a cluster's head to answer before saying it cannot be reached.
CONNECT_TIMEOUT = 5.0


class ClusterError(RuntimeError):
    """Ray could not be started or joined; the message says what to check."""


def local_cpus() -> int:
    """The cores this process may run on (a container's or a job's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray for the body: a local one on this machine's cores when `address` is None (stopped
    after), or the cluster at `address` ("host:port", "ray://host:port" or "auto"). A Ray that
    this process already started (a notebook, a test) is used as it is and left running."""
    import ray

    if ray.is_initialized() and address is None:
        yield
        return
    if address not in (None, "auto"):
        check_reachable(address)
    try:
        ray.init(address=address or "local", num_cpus=None if address else local_cpus(),
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ClusterError(f"could not start or join {where}: {e}; with --address, check that "
                           "`ray start --head` runs there and that its Ray version is this "
                           f"one's ({ray.__version__})") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str) -> None:
    """ClusterError at once when nothing answers at `address`, instead of Ray's long retries."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not host:port; give the head node's "
                           "address as `ray start --head` printed it, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with `ray "
            "start --head --port=6379` on the head node, check the host and port (and the "
            "firewall), or leave out --address to run on this machine") from None


def run_tasks(fn: Callable[..., Any], jobs: Sequence[tuple], *, cpus: float = 1,
              gpus: float = 0) -> list[Any]:
    """fn(*job) for every job, as Ray tasks of `cpus` CPUs and `gpus` GPUs each (inside a
    `ray_session`), each with torch using that many threads; their results in the order of
    `jobs`. Every task runs to its end even when one fails (what it wrote stays); then the first
    failure is raised as its own exception. Ray retries nothing: a failed run is for the user to
    see."""
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_with_threads)
    refs = [task.remote(fn, cpus, *job) for job in jobs]
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    results, errors = [], []
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayTaskError as e:
            errors.append(e.cause if isinstance(e.cause, BaseException) else e)
            results.append(None)
    if errors:
        raise errors[0]
    return results


def _with_threads(fn: Callable[..., Any], cpus: float, *args: Any) -> Any:
    """fn(*args) with torch's threads, and the OpenMP and BLAS pools scikit-learn's k-means uses
    (threadpoolctl, a scikit-learn dependency), set to the task's CPUs: its share, not the
    machine's. Two tasks' k-means each taking every core took 15x longer on 2 cores."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return fn(*args)
