"""The closed reservation loop: write the target, read back what the kernel
really gave, and while short: compact, optionally drop clean page cache,
rewrite; stop when met, after a few rounds without progress, or at the timeout.

Freshly compacted memory is not always allocatable at once (measured here:
compact then rewrite at once stalled at 3,900 of 5,200 pages; with a pause
of half a second, 5,200 every time), so every round after a compaction waits
before it rewrites: 0.1 s, doubling while no page comes, at most 1 s.

Pure logic over a small control interface, so that it is tested against a
simulated kernel as well as the real one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

PATIENCE = 5  # rounds in a row without a new page before giving up
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 1.0


class PoolControl(Protocol):
    label: str

    def total(self) -> int: ...
    def in_use(self) -> int: ...
    def write(self, pages: int) -> None: ...
    def compact(self) -> None: ...


@dataclass(frozen=True)
class Target:
    control: PoolControl
    pages: int


@dataclass(frozen=True)
class ReserveResult:
    target: int
    achieved: int
    start: int
    rounds: int
    seconds: float
    per_pool: tuple[tuple[str, int, int], ...]  # (label, target, achieved)

    @property
    def met(self) -> bool:
        return self.achieved >= self.target


def reserve(targets: Sequence[Target], timeout: float,
            drop_caches: Callable[[], None] | None = None,
            clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> ReserveResult:
    t0 = clock()
    goals: list[tuple[PoolControl, int]] = []
    for t in targets:
        floor = t.control.in_use()
        goal = t.pages
        if goal < floor:
            log.warning("%s: target %d pages is below the %d pages in use; keeping %d "
                        "(the pool never shrinks below what is in use)",
                        t.control.label, goal, floor, floor)
            goal = floor
        goals.append((t.control, goal))
    start = sum(c.total() for c, _ in goals)

    def achieved() -> list[int]:
        return [c.total() for c, _ in goals]

    rounds = 0
    stalled = 0
    backoff = FIRST_BACKOFF
    best = -1
    now_have = achieved()
    while True:
        rounds += 1
        for (c, goal), have in zip(goals, now_have):
            if have != goal:
                c.write(goal)
        now_have = achieved()
        total_have = sum(min(h, g) for h, (_, g) in zip(now_have, goals))
        short = [(c, g, h) for (c, g), h in zip(goals, now_have) if h < g]
        log.debug("round %d: %d of %d pages", rounds, sum(now_have), sum(g for _, g in goals))
        if not short:
            break
        if total_have > best:
            best = total_have
            stalled = 0
            backoff = FIRST_BACKOFF
        else:
            stalled += 1
        elapsed = clock() - t0
        if stalled >= PATIENCE or elapsed >= timeout:
            break
        for c, _, _ in short:
            c.compact()
        if drop_caches is not None:
            drop_caches()
        sleep(min(backoff, max(0.0, timeout - (clock() - t0))))
        if stalled:
            backoff = min(backoff * 2, MAX_BACKOFF)
    per_pool = tuple((c.label, g, h) for (c, g), h in zip(goals, now_have))
    return ReserveResult(target=sum(g for _, g in goals), achieved=sum(now_have), start=start,
                         rounds=rounds, seconds=clock() - t0, per_pool=per_pool)
