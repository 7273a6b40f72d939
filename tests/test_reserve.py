"""The reservation loop against a simulated kernel: fragmentation that only
compaction undoes, stalls, the timeout, and pages in use."""

from __future__ import annotations

from dataclasses import dataclass, field

from hugepage_agent import reserve


@dataclass
class SimPool:
    """Each write gets at most `per_write` new pages; compaction frees `per_compact`
    more for later writes; never more than `ceiling` in all."""

    label: str = "sim pool"
    have: int = 0
    used: int = 0
    per_write: int = 100
    per_compact: int = 300
    ceiling: int = 10_000
    easy: int = 0
    writes: list[int] = field(default_factory=list)
    compactions: int = 0

    def total(self) -> int:
        return self.have

    def in_use(self) -> int:
        return self.used

    def write(self, pages: int) -> None:
        self.writes.append(pages)
        if pages <= self.have:
            self.have = max(pages, self.used)
            return
        gain = min(pages - self.have, self.per_write + self.easy, self.ceiling - self.have)
        self.easy = 0
        self.have += max(gain, 0)

    def compact(self) -> None:
        self.compactions += 1
        self.easy += self.per_compact


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.01  # every look at the clock costs a little
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def run(pool: SimPool, target: int, timeout: float = 30.0) -> reserve.ReserveResult:
    clock = Clock()
    return reserve.reserve([reserve.Target(pool, target)], timeout, clock=clock, sleep=clock.sleep)


def test_met_on_first_write() -> None:
    p = SimPool(per_write=10_000)
    r = run(p, 5200)
    assert r.met and r.achieved == 5200 and r.rounds == 1 and p.compactions == 0


def test_compacts_and_retries_until_met() -> None:
    p = SimPool()
    r = run(p, 5200)
    assert r.met and r.achieved == 5200
    assert p.compactions == r.rounds - 1 > 0


def test_stops_when_no_progress() -> None:
    p = SimPool(ceiling=1600)
    r = run(p, 5200)
    assert not r.met and r.achieved == 1600
    assert r.rounds < 20 and r.seconds < 30


def test_timeout_is_respected() -> None:
    p = SimPool(per_write=1, per_compact=0)
    r = run(p, 5200, timeout=2.0)
    assert not r.met and r.seconds <= 2.5


def test_never_shrinks_below_in_use() -> None:
    p = SimPool(have=800, used=700, per_write=0)
    r = run(p, 100)
    assert p.have == 700 and r.target == 700 and r.met


def test_shrinks_to_target_when_free() -> None:
    p = SimPool(have=800, used=0)
    r = run(p, 100)
    assert p.have == 100 and r.met


def test_drop_caches_is_called_between_rounds_only_when_asked() -> None:
    calls = []
    clock = Clock()
    r = reserve.reserve([reserve.Target(SimPool(), 2000)], 30,
                        drop_caches=lambda: calls.append(1), clock=clock, sleep=clock.sleep)
    assert r.met and len(calls) == r.rounds - 1 > 0


def test_several_pools_round_together() -> None:
    a, b = SimPool(label="node 0"), SimPool(label="node 1", ceiling=500)
    clock = Clock()
    r = reserve.reserve([reserve.Target(a, 1000), reserve.Target(b, 1000)], 30,
                        clock=clock, sleep=clock.sleep)
    assert a.have == 1000 and b.have == 500 and not r.met
    assert r.per_pool == (("node 0", 1000, 1000), ("node 1", 1000, 500))
