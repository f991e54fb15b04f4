"""Ordered parallel map over worker processes that stops, instead of waiting forever, when a worker dies.

``multiprocessing.Pool`` silently replaces a worker killed by a signal (the out-of-memory killer,
``kill -9``) and then waits forever for the task it was running. :func:`ordered_map` runs on a
``concurrent.futures.ProcessPoolExecutor``, which notices a vanished worker, and turns that into a
:class:`WorkerDiedError` naming what to do.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

TASKS_IN_FLIGHT_PER_WORKER = 4


class WorkerDiedError(OSError):
    """A worker process ended abruptly (killed by a signal, e.g. for memory); the work was stopped."""


def ordered_map(
    function: Callable[[Task], Result],
    tasks: Iterable[Task],
    workers: int,
    initializer: Callable[[], None] | None = None,
    what: str = "work",
) -> Iterator[Result]:
    """``map(function, tasks)`` in ``workers`` forked processes (in-process when ``workers <= 1``),
    results in task order, at most a few tasks per worker in flight.

    Raises :class:`WorkerDiedError` when a worker process dies; exceptions raised by ``function``
    propagate unchanged. Closing the generator early cancels the queued tasks.
    """
    if workers <= 1:
        if initializer is not None:
            initializer()
        yield from map(function, tasks)
        return
    pending: deque[Future[Result]] = deque()
    task_iter = iter(tasks)
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=initializer)
    try:
        for task in task_iter:
            pending.append(executor.submit(function, task))
            if len(pending) >= workers * TASKS_IN_FLIGHT_PER_WORKER:
                yield _result(pending.popleft(), workers, what)
        while pending:
            yield _result(pending.popleft(), workers, what)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _result(future: Future[Result], workers: int, what: str) -> Result:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise WorkerDiedError(
            f"one of the {workers} worker processes for {what} died abruptly (killed by a signal, e.g. out of memory); "
            "stopped. Rerun with fewer --workers"
        ) from exc
