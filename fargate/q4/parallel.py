"""An ordered parallel map over an iterator: the one primitive both passes of the job use.

:func:`ordered_map` applies ``fn`` to the items on a thread pool, at most ``window`` items in flight,
and yields the results **in input order** (so whatever merges them does it in a fixed order, and the
result is the same for any number of workers). The first error, in input order, is re-raised to the
consumer; the items not yet started are cancelled. Closing the generator early (the consumer stopped or
failed) cancels what is queued and waits for what runs. The work must release the GIL to gain anything:
pyarrow's parsing, casting and writing and numpy's larger operations do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, *, window: int | None = None, name: str = "q4-map"
) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, ``window`` (default
    ``2 * workers``) items at most taken ahead of the consumer."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    limit = max(1, window if window is not None else 2 * workers)
    pending: deque[Future[R]] = deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < limit:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(pool.submit(fn, item))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
