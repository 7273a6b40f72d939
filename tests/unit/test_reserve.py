"""The reservation loop against a simulated kernel: fragmentation that only
compaction undoes, stalls while the kernel settles, memory that is really
full, the timeout, the escalating measures, and pages in use."""

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
    ceiling: int = 10_000  # pages the memory could ever give
    easy: int = 0
    stuck: int = 0  # writes that gain nothing at first (memory still settling)
    page_bytes: int = 2 << 20
    multi_node: bool = False
    writes: list[int] = field(default_factory=list)
    compactions: int = 0
    node_compactions: int = 0
    reclaimed: int = 0
    evacuated: int = 0
    per_evacuate: int = 0  # what an evacuation frees for later writes

    def total(self) -> int:
        return self.have

    def in_use(self) -> int:
        return self.used

    def write(self, pages: int) -> None:
        self.writes.append(pages)
        if pages <= self.have:
            self.have = max(pages, self.used)
            return
        if self.stuck > 0:
            self.stuck -= 1
            return
        gain = min(pages - self.have, self.per_write + self.easy, self.ceiling - self.have)
        self.easy = 0
        self.have += max(gain, 0)

    def compact(self) -> None:
        self.compactions += 1
        self.easy += self.per_compact

    def compact_nodes(self) -> None:
        self.node_compactions += 1
        self.easy += self.per_compact

    def nodes_differ(self) -> bool:
        return self.multi_node

    def reclaim(self, nbytes: int) -> bool:
        self.reclaimed += nbytes
        return True

    def evacuate(self, pages: int) -> bool:
        self.evacuated += pages
        self.have = self.used  # its free pages given back first
        self.easy += self.per_evacuate
        return True

    def room(self) -> tuple[int, int]:
        left = max(self.ceiling - self.have, 0) * self.page_bytes
        return left // 2, left - left // 2  # free, reclaimable


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
    assert r.met and r.achieved == 5200 and r.stop == reserve.STOP_MET
    assert p.compactions == r.rounds - 1 > 0
    assert [m.name for m in r.measures] == [reserve.COMPACT]
    assert r.first_write + sum(m.gained for m in r.measures) == 5200


def test_stops_early_only_when_memory_is_full() -> None:
    p = SimPool(ceiling=1600)
    r = run(p, 5200)
    assert not r.met and r.achieved == 1600 and r.stop == reserve.STOP_NO_MEMORY
    assert r.rounds < 20 and r.seconds < 30
    assert r.missing_bytes == 3600 * (2 << 20) and r.room_bytes < r.missing_bytes
    assert "memory is full" in r.explain()


def test_keeps_going_through_a_long_stall() -> None:
    """Memory just released settles for a while: today's give-up after five
    stalled rounds stopped here; the budget is spent instead."""
    p = SimPool(stuck=12)
    r = run(p, 5200, timeout=60.0)
    assert r.met and r.achieved == 5200
    names = [m.name for m in r.measures]
    assert reserve.SETTLE in names and reserve.COMPACT in names


def test_timeout_is_respected_and_said() -> None:
    p = SimPool(per_write=0, per_compact=0)
    r = run(p, 5200, timeout=2.0)
    assert not r.met and r.stop == reserve.STOP_TIMEOUT and r.seconds <= 2.5
    assert "budget" in r.explain()


def test_spends_the_whole_budget_when_memory_allows() -> None:
    p = SimPool(per_write=0, per_compact=0)
    r = run(p, 5200, timeout=20.0)
    assert r.stop == reserve.STOP_TIMEOUT and r.seconds >= 19.0
    assert r.rounds > 10


def test_ladder_escalates_to_caches_and_nodes() -> None:
    p = SimPool(per_write=0, per_compact=0, multi_node=True)
    clock = Clock()
    calls = []
    r = reserve.reserve([reserve.Target(p, 100)], 10, drop_caches=lambda: calls.append(1),
                        clock=clock, sleep=clock.sleep)
    names = [m.name for m in r.measures]
    assert names == [reserve.COMPACT, reserve.EVACUATE, reserve.SETTLE, reserve.RECLAIM,
                     reserve.DROP_CACHES, reserve.COMPACT_NODES]
    assert calls and p.node_compactions > 0
    assert p.reclaimed >= 100 * (2 << 20)  # what was missing
    assert all(m.gained == 0 for m in r.measures)


def test_evacuation_takes_over_when_compaction_stalls() -> None:
    """Compaction that aborts every time (its free scanner finds the top of
    memory packed full): one evacuation through 1 GiB pages frees the rest."""
    p = SimPool(have=2800, per_write=0, per_compact=0, per_evacuate=5200)
    r = run(p, 5200)
    assert r.met and p.evacuated == 5200
    gained = {m.name: m.gained for m in r.measures}
    assert gained[reserve.EVACUATE] == 2400 and gained[reserve.COMPACT] == 0


def test_measures_report_their_gains() -> None:
    p = SimPool(per_write=50, per_compact=300)
    r = run(p, 2000)
    assert r.met
    text = r.measures_text()
    assert text.startswith("first write +50") and "compact x" in text


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
    r = reserve.reserve([reserve.Target(SimPool(stuck=5), 2000)], 30,
                        drop_caches=lambda: calls.append(1), clock=clock, sleep=clock.sleep)
    assert r.met and calls
    assert reserve.DROP_CACHES not in [m.name for m in run(SimPool(stuck=5), 2000).measures]
    assert any(m.name == reserve.DROP_CACHES for m in r.measures)


def test_several_pools_round_together() -> None:
    a, b = SimPool(label="node 0"), SimPool(label="node 1", ceiling=500)
    clock = Clock()
    r = reserve.reserve([reserve.Target(a, 1000), reserve.Target(b, 1000)], 30,
                        clock=clock, sleep=clock.sleep)
    assert a.have == 1000 and b.have == 500 and not r.met
    assert r.per_pool == (("node 0", 1000, 1000), ("node 1", 1000, 500))


def test_a_node_that_stays_short_is_named() -> None:
    """Per-node pools: the report names the node whose pool stayed short."""
    n0 = SimPool(label="2M pool on node 0", per_write=10_000)
    n1 = SimPool(label="2M pool on node 1", ceiling=40, per_write=10, per_compact=0)
    clock = Clock()
    r = reserve.reserve([reserve.Target(n0, 100), reserve.Target(n1, 100)], 5.0,
                        clock=clock, sleep=clock.sleep)
    assert not r.met and [p.label for p in r.short_pools()] == ["2M pool on node 1"]
    assert r.explain().endswith("; short: 2M pool on node 1 (40 of 100)"), r.explain()
    assert "node 0" not in r.explain()
