"""Where the jobs of ``simulate`` and ``validate`` run: one interface, local processes or Dask distributed.

A *job* is one picklable argument of a module-level function ``fn(job, report)``; ``report(k)`` tells the
caller's progress bar that ``k`` more units of work (training steps) are done. Every job is a function of
its own arguments and seeds, so where it runs never changes its result.

* :class:`LocalExecutor` (the default, ``--executor local``): ``workers == 1`` runs the jobs one after
  another in this process; ``workers > 1`` in that many spawned processes (``fork`` is unsafe once torch
  has started threads), progress sent back through a queue in packets. The workers ignore Ctrl-C (the
  parent stops them) and die with their parent, even when it is killed (:func:`_worker_init`: Linux's
  parent-death signal, and everywhere a watchdog thread that exits when the parent is gone).
* :class:`DaskExecutor` (``--executor dask``, the optional extra ``pip install "sit[dask]"``): the jobs are
  submitted to a Dask distributed scheduler (``--scheduler tcp://host:port``), or to a
  ``distributed.LocalCluster`` of ``workers`` single-threaded processes when no address is given.
  Progress advances by a job's ``weight`` when it ends (workers on other machines cannot reach the bar).

:meth:`Executor.run` hands every result to ``on_done(index, result)`` in the calling process as soon as its
job ends (in any order); the caller orders them. Ctrl-C (``KeyboardInterrupt``) cancels what has not
started and stops the rest.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["EXECUTORS", "DaskExecutor", "Executor", "ExecutorError", "LocalExecutor", "dask_available",
           "guard_worker", "make_executor"]

EXECUTORS: tuple[str, ...] = ("local", "dask")
Job = Any
JobFn = Callable[[Job, Callable[[int], None]], Any]


class ExecutorError(RuntimeError):
    """An executor cannot be built (the engine is not installed, the scheduler cannot be reached)."""


def _no_report(k: int) -> None:
    """The ``report`` of a job that runs where no progress bar can be reached."""


class Executor(ABC):
    """Runs jobs (module docstring)."""

    name: str = ""
    workers: int = 1

    @abstractmethod
    def run(self, fn: JobFn, jobs: Sequence[Job], on_done: Callable[[int, Any], None],
            progress: Callable[[int], None] | None = None, weights: Sequence[int] | None = None) -> None:
        """Run ``fn(job, report)`` for every job; ``on_done(i, result)`` as job ``i`` ends; ``progress(k)`` for
        reported work (``weights[i]`` units at once when a job ends, for engines that cannot stream it)."""

    def close(self) -> None:  # noqa: B027 (optional hook: most executors hold nothing)
        """Release the engine's resources (nothing by default)."""

    def describe(self) -> str:
        return f"{self.name} ({self.workers} worker(s))"

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QueueReport:
    """``report`` of a job in a local worker process: packets of ``>= 25`` units into a manager queue."""

    def __init__(self, queue: Any) -> None:
        self.queue, self.pending = queue, 0

    def __call__(self, k: int) -> None:
        self.pending += k
        if self.pending >= 25:
            self.queue.put(self.pending)
            self.pending = 0

    def flush(self) -> None:
        if self.pending:
            self.queue.put(self.pending)
            self.pending = 0


_WORKER_QUEUE: Any = None  # a local worker's progress queue (set by _worker_init)
WATCHDOG_SECONDS = 1.0  # how often a local worker checks that its parent is alive


def _die_with_parent(parent: int) -> None:
    """Make this process end when ``parent`` does: ``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread
    polling :func:`os.getppid` (the parent of an orphan becomes another process) everywhere."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - the watchdog still runs
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(WATCHDOG_SECONDS)

    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, name="sit-parent-watchdog", daemon=True).start()


def guard_worker(parent: int) -> None:
    """Initializer of any worker process of ``parent`` (a pool's ``initializer``): Ctrl-C is left to the
    parent, which stops its workers, and the worker dies with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)


def _worker_init(queue: Any, parent: int) -> None:
    """Initializer of a local worker: progress queue, Ctrl-C left to the parent, death with the parent."""
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue
    guard_worker(parent)


def _process_call(fn: JobFn, job: Job) -> Any:
    report = _QueueReport(_WORKER_QUEUE)
    try:
        return fn(job, report)
    finally:
        report.flush()


class LocalExecutor(Executor):
    """This machine: serial with one worker, spawned processes with more (module docstring)."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, fn: JobFn, jobs: Sequence[Job], on_done: Callable[[int, Any], None],
            progress: Callable[[int], None] | None = None, weights: Sequence[int] | None = None) -> None:
        report = progress if progress is not None else _no_report
        workers = min(self.workers, len(jobs))
        if workers <= 1:
            for i, job in enumerate(jobs):
                on_done(i, fn(job, report))
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from queue import Empty

        ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
        queue = ctx.Queue()
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(queue, os.getpid()))

        def drain() -> None:
            while True:
                try:
                    report(queue.get_nowait())
                except Empty:
                    break

        try:
            futures = {pool.submit(_process_call, fn, job): i for i, job in enumerate(jobs)}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                for fut in sorted(finished, key=lambda f: futures[f]):
                    on_done(futures[fut], fut.result())
        except BaseException:
            processes = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown clears it
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in processes:
                proc.terminate()
            for proc in processes:
                proc.join(timeout=5)
            queue.cancel_join_thread()
            raise
        pool.shutdown(wait=True)
        drain()
        queue.close()


def dask_available() -> bool:
    """Whether ``dask.distributed`` can be imported (the optional extra ``[dask]``)."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


class DaskExecutor(Executor):
    """A Dask distributed cluster (module docstring).

    Arguments:
        scheduler: the scheduler's address (``tcp://host:port``); ``None`` starts a ``LocalCluster``.
        workers: the LocalCluster's workers (ignored with an address).
        processes: the LocalCluster's workers are processes (``False``: threads of this process, for tests).
        timeout: seconds to wait for the scheduler.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int = 1, processes: bool = True,
                 timeout: float = 10.0) -> None:
        if not dask_available():
            raise ExecutorError('--executor dask needs Dask distributed: pip install "sit[dask]" '
                                "(or pip install dask distributed)")
        from distributed import Client, LocalCluster

        self.scheduler = scheduler
        self._cluster = None
        try:
            if scheduler is None:
                self._cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                             dashboard_address=None)
                self.client = Client(self._cluster, timeout=timeout)
            else:
                self.client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as err:
            self.close()
            raise ExecutorError(f"cannot reach the Dask scheduler at {scheduler or 'a new LocalCluster'}: "
                                f"{err.__class__.__name__}: {err}") from None
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {}))) if scheduler else workers

    def describe(self) -> str:
        return f"dask at {self.scheduler or 'a LocalCluster'} ({self.workers} worker(s))"

    def run(self, fn: JobFn, jobs: Sequence[Job], on_done: Callable[[int, Any], None],
            progress: Callable[[int], None] | None = None, weights: Sequence[int] | None = None) -> None:
        from distributed import as_completed

        futures = [self.client.submit(fn, job, _no_report, pure=False) for job in jobs]
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                i = index[fut.key]
                on_done(i, fut.result())
                if progress is not None and weights is not None:
                    progress(int(weights[i]))
        except BaseException:
            self.client.cancel(futures)
            raise

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def make_executor(name: str, workers: int = 1, scheduler: str | None = None) -> Executor:
    """The executor ``name`` of :data:`EXECUTORS` (raises :class:`ExecutorError` or ``ValueError``)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name == "local":
        if scheduler is not None:
            raise ValueError("--scheduler needs --executor dask")
        return LocalExecutor(workers)
    return DaskExecutor(scheduler, workers)
