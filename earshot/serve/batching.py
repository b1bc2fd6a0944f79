"""The batching queue: concurrent requests decoded together, one decode at a time.

Requests wait in a bounded ``asyncio.Queue`` (a full one is refused at once, so a client
hears "busy" instead of waiting for minutes). One worker task takes the first waiting
request, then up to ``max_batch_size - 1`` more, waiting at most ``max_wait`` seconds
after the first for them, and only while others are on their way (``arriving``: being
uploaded and read), so a lone request never waits for company. It groups the batch by
decoding options (requests whose options differ cannot share a search) and decodes each
group with one call in a single decoding thread, so the event loop keeps accepting
uploads while the model runs. Each request's future gets its own result, or the
exception its decode raised: a group that fails is decoded again one request at a time,
so one bad input fails only its own request.

>>> import asyncio, numpy as np
>>> async def demo():
...     batcher = Batcher(lambda key, arrays: [len(a) for a in arrays], max_batch_size=4)
...     batcher.start()
...     jobs = [batcher.submit(np.zeros(n, np.float32), key="greedy") for n in (10, 20)]
...     lengths = [await job.future for job in jobs]
...     await batcher.stop()
...     return lengths, [job.batch_size for job in jobs]
>>> asyncio.run(demo())
([10, 20], [2, 2])
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("earshot.serve")

# decode(key, arrays) -> one result per array, in order (runs in the decoding thread)
Decode = Callable[[Hashable, Sequence[np.ndarray]], Sequence[Any]]


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already: try again shortly."""


class ShuttingDown(Exception):
    """The server stopped before this request was decoded."""


@dataclass(eq=False)
class Job:
    """One request in the queue: its samples, its options key, the future its handler
    awaits, and the times the log line reports (``time.monotonic`` seconds)."""

    audio: np.ndarray
    key: Hashable
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when its decode began
    decode_seconds: float = 0.0  # of the call(s) that decoded it
    batch_size: int = 0  # requests in the call that decoded it

    @property
    def queue_seconds(self) -> float:
        """From joining the queue to the start of its decode (or until now)."""
        return (self.started_at or time.monotonic()) - self.queued_at


class Batcher:
    """The queue and its worker; ``start`` and ``stop`` inside the event loop that serves."""

    def __init__(self, decode: Decode, max_batch_size: int = 16, max_wait: float = 0.01,
                 max_queue: int = 64):
        if max_batch_size < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait >= 0")
        self.decode = decode
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.calls = 0  # decode calls made (the tests and /health read it)
        self.arriving = 0  # requests being received and read, soon to be submitted
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Create the queue and the worker in the running event loop."""
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="earshot-decode")
        self._task = asyncio.get_running_loop().create_task(self._work(), name="earshot-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with ShuttingDown (a decode that
        is running finishes in its thread, unheard)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():
            _fail(self._queue.get_nowait(), ShuttingDown("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._executor = None

    @property
    def depth(self) -> int:
        """Requests waiting (not counting those being decoded)."""
        return 0 if self._queue is None else self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- the handlers' side ---------------------------------------------------------------

    def submit(self, audio: np.ndarray, key: Hashable) -> Job:
        """Queue ``audio`` to decode with the options ``key`` stands for; await
        ``job.future``. QueueFull at once when ``max_queue`` requests wait already."""
        if self._queue is None or not self.running:
            raise ShuttingDown("the server is not running its decoder")
        job = Job(audio, key, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests are waiting already") from None
        return job

    # -- the worker -------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._decode_batch(batch)
            except asyncio.CancelledError:
                for job in batch:
                    _fail(job, ShuttingDown("the server is shutting down"))
                raise
            except Exception as err:  # a bug in here must not stop the server
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    _fail(job, err)

    async def _collect(self) -> list[Job]:
        """The first waiting job and up to ``max_batch_size - 1`` more: those waiting
        already, then any that arrive within ``max_wait`` of taking the first while
        others are ``arriving``."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0 or self.arriving <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _decode_batch(self, batch: list[Job]) -> None:
        """Each group of equal options in one call, in the order the groups arrived;
        jobs whose client has gone (their future cancelled) are skipped."""
        groups: dict[Hashable, list[Job]] = {}
        for job in batch:
            groups.setdefault(job.key, []).append(job)
        for key, jobs in groups.items():
            live = [job for job in jobs if not job.future.done()]
            if live:
                await self._decode_group(key, live)

    async def _decode_group(self, key: Hashable, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        for job in jobs:
            job.started_at = job.started_at or started
            job.batch_size = len(jobs)
        self.calls += 1
        try:
            results = await loop.run_in_executor(self._executor, self.decode, key,
                                                 [job.audio for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"decoding {len(jobs)} inputs gave {len(results)} results")
        except asyncio.CancelledError:
            raise
        except Exception as err:
            elapsed = time.monotonic() - started
            for job in jobs:
                job.decode_seconds += elapsed
            if len(jobs) == 1:
                _fail(jobs[0], err)
                return
            log.warning("a batch of %d failed (%s); decoding its requests one by one",
                        len(jobs), err)
            for job in jobs:
                await self._decode_group(key, [job])
            return
        elapsed = time.monotonic() - started
        for job, result in zip(jobs, results):
            job.decode_seconds += elapsed
            if not job.future.done():
                job.future.set_result(result)


def _fail(job: Job, err: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(err)
