"""The closed reservation loop: write the target, read back what the kernel
really gave, and while short, escalate through measures and rewrite, until
the target is met or the budget (`reserve.timeout`) is spent.

It stops early in one case only: when more rounds cannot help, because the
free plus reclaimable memory (of the pool's node, or of the machine) is below
what is still missing. Then it still takes what rounds gain, and stops after
a few rounds that gain nothing. Without that proof it keeps going: a stall is often
the kernel still settling (memory just released is isolated while the guest
reports it free to the host, compaction is deferred after failures), and
measured here a loop that gave up after five stalled rounds stopped at 2,633
of 5,200 pages with 27 s of its budget left.

The measures, from the cheapest up; after a round that gains pages the loop
goes back to the first, a round that gains none climbs to the next, and
after the last the ladder starts again with longer pauses:
  - compact: the kernel's compaction of the pool's memory, then a pause;
  - evacuate (2 MiB pools): give back the pool's free pages, reserve as many
    1 GiB pages as the whole target needs and release them at once; the
    rewrite then takes the 2 MiB pages again. The kernel's contiguous
    allocator empties whole 1 GiB ranges by moving their pages into the free
    4 KiB holes elsewhere, which compaction does not do once its free
    scanner, starting at the top of memory, finds the top packed full (it
    then aborts every run). The pool's own free pages are given back first,
    as they would pin those ranges. Measured here, memory fragmented on
    purpose, then 6 GiB of page cache and huge pages churned through it:
    compaction stalled at 2,786, 4,557, 5,023 and 4,175 of 5,200 pages, and
    an evacuation reached 5,200 each time, in 0.4 to 4.4 s. The 1 GiB pool
    is put back as it was;
  - settle: a longer pause with no compaction, for the kernel to settle;
  - reclaim: ask the kernel to reclaim as much as is still missing from the
    pool's node(s) (proactive reclaim, /sys/devices/system/node/nodeN/reclaim,
    kernel 6.17 and later): the coldest page cache, as the allocation's own
    reclaim would take, then compact. Measured here: right after 6 GiB of page
    cache was read into memory fragmented on purpose, compaction alone gained
    576 pages in 19 rounds and the loop ran out of its budget at 3,407 of 5,200;
  - drop caches: drop all clean page cache (only where `reserve.drop_caches`);
  - compact nodes: compaction node by node (a global pool on a NUMA host).
While the free plus reclaimable memory cannot cover what is missing, each
round only compacts: the other measures free nothing then, and an evacuation
asks the kernel for 1 GiB ranges that it cannot empty (measured here: one
such write took 29 s of a 30 s budget). A single write to the pool can still
take a while when the kernel reclaims for it; the loop checks its budget
between steps, and the report gives the time spent.
Every rewrite follows a pause: freshly compacted memory is not always
allocatable at once (measured here: compact then rewrite at once stalled at
3,900 of 5,200 pages; with a pause of half a second, 5,200 every time).

Pure logic over a small control interface, so that it is tested against a
simulated kernel as well as the real one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

log = logging.getLogger(__name__)

FIRST_PAUSE = 0.1
MAX_PAUSE = 1.0
SETTLE_PAUSE = 1.0
NO_ROOM_PATIENCE = 3  # stalled rounds before stopping when the target cannot be met

STOP_MET = "met"
STOP_TIMEOUT = "timeout"
STOP_NO_MEMORY = "no memory"

COMPACT = "compact"
EVACUATE = "evacuate"
SETTLE = "settle"
RECLAIM = "reclaim"
DROP_CACHES = "drop caches"
COMPACT_NODES = "compact nodes"


class PoolControl(Protocol):
    label: str
    page_bytes: int

    def total(self) -> int: ...
    def in_use(self) -> int: ...
    def write(self, pages: int) -> None: ...
    def compact(self) -> None: ...
    def compact_nodes(self) -> None:
        """Compact the memory of each NUMA node in turn."""
        ...

    def nodes_differ(self) -> bool:
        """Whether compacting node by node differs from compact() (a global pool
        on a host with several nodes)."""
        ...

    def reclaim(self, nbytes: int) -> bool:
        """Ask the kernel to reclaim nbytes from the pool's memory; False where
        the kernel has no such interface."""
        ...

    def evacuate(self, pages: int) -> bool:
        """Give back the pool's free pages, then reserve and release enough
        1 GiB pages to hold `pages` of the pool (the rewrite that follows
        takes them again); False where that is not possible (a 1 GiB pool, or
        no 1 GiB pages)."""
        ...

    def room(self) -> tuple[int, int]:
        """(free bytes, reclaimable bytes) of the memory this pool draws on."""
        ...


@dataclass(frozen=True)
class Target:
    control: PoolControl
    pages: int


@dataclass(frozen=True)
class Measure:
    name: str
    runs: int
    gained: int  # pages the rewrites after it brought


class PoolResult(NamedTuple):
    """One pool after a reservation: its label, its target, what it reached."""
    label: str
    target: int
    achieved: int


@dataclass(frozen=True)
class ReserveResult:
    target: int
    achieved: int
    start: int
    rounds: int
    seconds: float
    per_pool: tuple[PoolResult, ...]
    first_write: int = 0  # pages the first write brought
    measures: tuple[Measure, ...] = ()
    stop: str = STOP_MET
    missing_bytes: int = 0  # when stopped short: what was still missing
    room_bytes: int = 0  # and the free plus reclaimable memory there was

    @property
    def met(self) -> bool:
        return self.achieved >= self.target

    def short_pools(self) -> list[PoolResult]:
        """The pools (per node, on a host with several) that stayed short."""
        return [p for p in self.per_pool if p.achieved < p.target]

    def explain(self) -> str:
        """Why the loop ended, in one sentence for the report and the journal;
        with several pools (nodes), which stayed short."""
        if self.met:
            return "the target is met"
        if self.stop == STOP_NO_MEMORY:
            why = (f"memory is full: {_gib(self.room_bytes)} free and reclaimable is less than "
                   f"the {_gib(self.missing_bytes)} still missing, so more rounds cannot help")
        else:
            why = (f"the {self.seconds:.1f} s budget (reserve.timeout) ran out with "
                   f"{_gib(self.room_bytes)} free and reclaimable against "
                   f"{_gib(self.missing_bytes)} missing: memory is fragmented or pinned")
        short = self.short_pools()
        if len(self.per_pool) > 1 and short:
            why += "; short: " + ", ".join(f"{p.label} ({p.achieved} of {p.target})"
                                           for p in short)
        return why

    def measures_text(self) -> str:
        parts = [f"first write +{self.first_write}"]
        parts += [f"{m.name} x{m.runs} +{m.gained}" for m in self.measures]
        return ", ".join(parts)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class _Ladder:
    """Which measure comes next: stay on one that gains, climb past one that
    does not, and start again (with longer pauses) after the last."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.level = 0
        self.pause = FIRST_PAUSE

    @property
    def current(self) -> str:
        return self.steps[self.level]

    def gained(self) -> None:
        self.pause = FIRST_PAUSE
        self.level = 0

    def no_gain(self) -> None:
        self.pause = min(self.pause * 2, MAX_PAUSE)
        self.level = (self.level + 1) % len(self.steps)


def _measure(step: str, short: list[tuple[PoolControl, int, int]],
             drop_caches: Callable[[], None] | None, pause: float) -> float:
    """Run one measure on the pools still short; returns the pause before the rewrite."""
    if step == DROP_CACHES and drop_caches is not None:
        drop_caches()
    for c, goal, have in short:
        missing = (goal - have) * c.page_bytes
        if step == EVACUATE:
            c.evacuate(goal)
        elif step == COMPACT_NODES:
            c.compact_nodes()
        elif step != SETTLE:  # compact, and after reclaim or dropping caches
            if step == RECLAIM:
                c.reclaim(missing)
            c.compact()
    return max(SETTLE_PAUSE, pause) if step == SETTLE else pause


ALL_STEPS = (COMPACT, EVACUATE, SETTLE, RECLAIM, DROP_CACHES, COMPACT_NODES)


class _Where(NamedTuple):
    """Where a reservation stands after a round."""
    short: list[tuple[PoolControl, int, int]]  # (pool, goal, have) of those short
    missing: int  # bytes
    room: int  # bytes free or reclaimable where they are short
    unreachable: bool  # memory cannot cover what is missing
    stop: str | None  # why to stop now, or None to go on


def _where(goals: Sequence[tuple[PoolControl, int]], now: Sequence[int], stalled: int, *,
           timed_out: bool) -> _Where:
    short = [(c, g, h) for (c, g), h in zip(goals, now) if h < g]
    if not short:
        return _Where(short, 0, 0, False, STOP_MET)
    missing = sum((g - h) * c.page_bytes for c, g, h in short)
    rooms = [sum(c.room()) for c, _, _ in short]
    room = sum(rooms)
    unreachable = all(r < (g - h) * c.page_bytes for r, (c, g, h) in zip(rooms, short))
    stop = None
    # when the target cannot be met: take what rounds still gain, then stop
    if unreachable and (room < min(c.page_bytes for c, _, _ in short)
                        or stalled >= NO_ROOM_PATIENCE):
        stop = STOP_NO_MEMORY
    elif timed_out:
        stop = STOP_NO_MEMORY if unreachable else STOP_TIMEOUT
    return _Where(short, missing, room, unreachable, stop)


def _goals(targets: Sequence[Target]) -> list[tuple[PoolControl, int]]:
    """Each pool's goal: its target, never below the pages in use."""
    goals = []
    for t in targets:
        floor = t.control.in_use()
        goal = t.pages
        if goal < floor:
            log.warning("%s: target %d pages is below the %d pages in use; keeping %d "
                        "(the pool never shrinks below what is in use)",
                        t.control.label, goal, floor, floor)
            goal = floor
        goals.append((t.control, goal))
    return goals


def _ladder(goals: Sequence[tuple[PoolControl, int]], drop_caches: bool) -> _Ladder:
    """The measures the loop escalates through for these pools."""
    steps = [COMPACT, EVACUATE, SETTLE, RECLAIM]
    if drop_caches:
        steps.append(DROP_CACHES)
    if any(c.nodes_differ() for c, _ in goals):
        steps.append(COMPACT_NODES)
    return _Ladder(steps)


def reserve(targets: Sequence[Target], timeout: float,
            drop_caches: Callable[[], None] | None = None,
            clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> ReserveResult:
    t0 = clock()
    goals = _goals(targets)
    start = sum(c.total() for c, _ in goals)
    target = sum(g for _, g in goals)

    def have_now() -> list[int]:
        return [c.total() for c, _ in goals]

    def rewrite(now: list[int]) -> list[int]:
        for (c, goal), have in zip(goals, now):
            if have != goal:
                c.write(goal)
        return have_now()

    def counted(now: list[int]) -> int:
        return sum(min(h, g) for h, (_, g) in zip(now, goals))

    now = rewrite(have_now())
    first_write = max(0, counted(now) - min(start, target))
    ladder = _ladder(goals, drop_caches is not None)
    runs: dict[str, int] = {}
    gains: dict[str, int] = {}
    rounds = 1
    stalled = 0
    stop = STOP_MET
    missing = room = 0
    while True:
        where = _where(goals, now, stalled, timed_out=clock() - t0 >= timeout)
        missing, room, unreachable = where.missing, where.room, where.unreachable
        if where.stop is not None:
            stop = where.stop
            break
        short = where.short
        # memory is full, not fragmented: only compaction can still gain pages (an
        # evacuation then asks the kernel for 1 GiB ranges it cannot empty, and
        # measured here held one write for 29 s of a 30 s budget)
        step = COMPACT if unreachable else ladder.current
        pause = _measure(step, short, drop_caches, ladder.pause)
        sleep(min(pause, max(0.0, timeout - (clock() - t0))))
        before = counted(now)
        now = rewrite(now)
        rounds += 1
        gain = counted(now) - before
        runs[step] = runs.get(step, 0) + 1
        gains[step] = gains.get(step, 0) + max(gain, 0)
        log.debug("round %d (%s): %d of %d pages (%+d)", rounds, step, sum(now), target, gain)
        if gain > 0:
            ladder.gained()
            stalled = 0
        else:
            ladder.no_gain()
            stalled += 1
    measures = tuple(Measure(name, runs[name], gains[name]) for name in ALL_STEPS
                     if name in runs)
    per_pool = tuple(PoolResult(c.label, g, h) for (c, g), h in zip(goals, now))
    result = ReserveResult(target=target, achieved=sum(now), start=start, rounds=rounds,
                           seconds=clock() - t0, per_pool=per_pool, first_write=first_write,
                           measures=measures, stop=stop,
                           missing_bytes=0 if stop == STOP_MET else missing,
                           room_bytes=0 if stop == STOP_MET else room)
    level = logging.INFO if result.met else logging.WARNING
    log.log(level, "reserved %d of %d pages in %d rounds, %.2f s: %s (measures: %s)",
            result.achieved, target, rounds, result.seconds, result.explain(),
            result.measures_text())
    return result
