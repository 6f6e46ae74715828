"""Dynamic batching: requests that arrive together are answered by one forward pass.

Each model has a queue. Its drain loop takes the first waiting request, then waits up to `max_wait` seconds for
more until the batch holds `max_batch` inputs, and hands the batch to the one worker thread that every model
shares: torch is never called from two threads at once (PEFT runs of one base share a model whose active adapter
the worker switches), and the event loop stays free to accept requests while a batch runs. While the worker is
busy with another batch, the waiting one keeps taking requests that arrive (`worker` is held only once the batch
is topped up): under load a batch is as full as the requests in flight allow, not as full as the first few
milliseconds made it. Each request's future gets its own rows back, or the batch's error.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ..data import Example
from ..errors import TunelabError

log = logging.getLogger("tunelab.serve")


@dataclass
class Job:
    examples: list[Example]
    future: asyncio.Future = field(repr=False)


class ModelQueue:
    """One model's queue and the loop that drains it in batches of up to `max_batch` inputs."""

    def __init__(self, predict: Callable[[list[Example]], list[Any]], executor: ThreadPoolExecutor,
                 worker: asyncio.Lock, max_batch: int, max_wait: float):
        self.predict = predict
        self.executor = executor
        self.worker = worker  # held by the batch the worker thread runs, whichever model's
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.carried: Job | None = None  # a request that did not fit the last batch: first in the next
        self.batches = 0  # for /health and the tests: how many forward batches ran
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._drain())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, examples: list[Example]) -> list[Any]:
        """The rows for `examples`, once the batch they joined has run."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Job(examples, future))
        return await future

    async def _next(self, timeout: float | None) -> Job | None:
        if self.carried is not None:
            job, self.carried = self.carried, None
            return job
        if timeout is None:
            return await self.queue.get()
        if not self.queue.empty():
            return self.queue.get_nowait()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self, jobs: list[Job], max_wait: float) -> list[Job]:
        """`jobs` with the requests that arrive within `max_wait` seconds added, up to `max_batch` inputs."""
        loop = asyncio.get_running_loop()
        size = sum(len(j.examples) for j in jobs)
        deadline = loop.time() + max_wait
        while size < self.max_batch:
            job = await self._next(max(0.0, deadline - loop.time()))
            if job is None:
                break
            if size + len(job.examples) > self.max_batch:
                self.carried = job  # never split a request: its rows come from one forward pass
                break
            jobs.append(job)
            size += len(job.examples)
        return jobs

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect([await self._next(None)], self.max_wait)
            async with self.worker:
                jobs = await self._collect(jobs, 0.0)  # what arrived while another batch ran
                jobs = [j for j in jobs if not j.future.done()]  # a client that went away is not computed for
                if not jobs:
                    continue
                examples = [e for j in jobs for e in j.examples]
                try:
                    rows = await loop.run_in_executor(self.executor, self.predict, examples)
                except asyncio.CancelledError:
                    for j in jobs:
                        j.future.cancel()
                    raise
                except Exception as e:  # the batch's error goes to each of its requests; the loop goes on
                    if not isinstance(e, TunelabError):
                        log.exception("a batch of %d inputs failed", len(examples))
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                self.batches += 1
                start = 0
                for j in jobs:
                    if not j.future.done():
                        j.future.set_result(rows[start:start + len(j.examples)])
                    start += len(j.examples)
