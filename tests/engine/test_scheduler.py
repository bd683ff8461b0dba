"""The scheduler owns the pages: admission, reservation, preemption and freeing,
against a stand-in cache of explicit page counts (no torch, no model)."""

from __future__ import annotations

import pytest

from maskkv_vllm.engine.request import Request, RequestStatus
from maskkv_vllm.engine.scheduler import Scheduler
from maskkv_vllm.sampling_params import SamplingParams


class Pages:
    """A ``KVCacheManager`` stand-in: ``free`` pages, ``held`` per request id."""

    def __init__(self, free: int, bound: int = 3) -> None:
        self.num_free_pages, self.bound = free, bound
        self.held: dict[str, int] = {}
        self.freed: list[str] = []

    def held_pages(self, r: Request) -> int:
        return self.held.get(r.request_id, 0)

    def reserved_pages(self, params, prompt_len: int) -> int:
        return self.bound

    def take(self, rid: str, n: int) -> None:
        """A step 0 that wrote ``n`` pages."""
        self.held[rid] = self.held.get(rid, 0) + n
        self.num_free_pages -= n

    def free(self, r: Request) -> None:
        self.num_free_pages += self.held.pop(r.request_id, 0)
        self.freed.append(r.request_id)
        r.seq = None


def make(rid, pages, m=10, gen=16):
    params = SamplingParams(gen_length=gen, block_length=gen, steps=gen)
    return Request(rid, [1] * m, params, pages)


def scheduler(pages, max_num_seqs=8, max_num_batched_tokens=1000):
    return Scheduler(max_num_seqs, max_num_batched_tokens, 10, pages)


def ids(requests):
    return [r.request_id for r in requests]


def test_admits_fcfs_by_free_pages_and_limits():
    pages = Pages(free=8)
    s = scheduler(pages, max_num_seqs=3, max_num_batched_tokens=100)
    for rid, n in [("a", 4), ("b", 5), ("c", 1), ("d", 1)]:
        s.add(make(rid, n))
    # 8 free pages: a (4) fits, b (5) does not, and c may not jump the queue.
    assert ids(s.schedule()) == ["a"]
    assert ids(s.waiting) == ["b", "c", "d"]
    pages.num_free_pages = 20
    # Tokens: a steps with 16; b's first step is 10 + 16 = 26 more -> 42.
    assert ids(s.schedule()) == ["b", "c"]
    assert len(s.running) == 3  # max_num_seqs stops d
    assert s.schedule() == []


def test_token_limit_and_lone_request():
    s = scheduler(Pages(free=10), max_num_batched_tokens=30)
    s.add(make("big", 1, m=50))
    s.add(make("small", 1, m=2))
    # Alone, a request above the token limit still runs (else it never would).
    assert ids(s.schedule()) == ["big"]
    assert s.schedule() == []  # 16 + 18 > 30


def test_reserve_preempts_the_newest_until_the_full_forwards_fit():
    pages = Pages(free=6)
    s = scheduler(pages)
    for rid in "abc":
        s.add(make(rid, 2))
    assert ids(s.schedule()) == ["a", "b", "c"]  # 2 + 2 + 2 of 6
    pages.take("a", 2)
    pages.take("b", 2)  # 2 free
    # a refreshes and may now take 5 pages: 3 beyond the 2 it holds.
    a = s.running[0]
    a.predicted_pages = 5
    assert s.reserve([a]) is True
    # c (newest) frees nothing: 2 < 3; b frees its 2: 4 >= 3.
    assert pages.freed == ["c", "b"] and pages.num_free_pages == 4
    assert ids(s.running) == ["a"] and ids(s.waiting) == ["b", "c"]
    assert s.metrics.num_preemptions == 2
    assert {r.status for r in s.waiting} == {RequestStatus.WAITING}
    assert s.reserve([a]) is False  # it fits now: nobody else goes


def test_reserve_never_preempts_the_last_request():
    pages = Pages(free=0)
    s = scheduler(pages)
    s.add(make("a", 0))
    s.schedule()
    a = s.running[0]
    a.predicted_pages = 4
    assert s.reserve([a]) is False and ids(s.running) == ["a"]


def test_preempted_requests_go_back_to_the_front_in_arrival_order():
    pages = Pages(free=3)
    s = scheduler(pages)
    for rid in "abcd":
        s.add(make(rid, 1))
    s.schedule()
    assert ids(s.running) == ["a", "b", "c"]
    pages.take("b", 1)
    s.preempt([s.running[2], s.running[1]])
    assert ids(s.waiting) == ["b", "c", "d"]
    assert [r.stats.num_preemptions for r in s.waiting] == [1, 1, 0]
    assert pages.freed == ["c", "b"] and pages.num_free_pages == 3


def test_recover_preempts_the_full_forwards_and_the_newest_other():
    pages = Pages(free=10, bound=7)
    s = scheduler(pages)
    for rid in "abc":
        s.add(make(rid, 1))
    s.schedule()
    b, c = s.running[1], s.running[2]
    pages.take("b", 3)  # b's step 0 wrote 3 pages before the pool ran short
    assert s.recover([b]) is None
    assert ids(s.running) == ["a"] and ids(s.waiting) == ["b", "c"]
    assert b.predicted_pages == 7  # re-reserved at the bound
    # Each page goes back once (b was freed twice, by recover and by preempt).
    assert pages.freed == ["b", "c"] and pages.num_free_pages == 10
    assert c.predicted_pages == 1


def test_recover_hands_back_a_request_that_cannot_fit_alone():
    pages = Pages(free=2)
    s = scheduler(pages)
    s.add(make("a", 1))
    s.schedule()
    (a,) = s.running
    pages.take("a", 2)
    assert s.recover([a]) is a
    assert pages.num_free_pages == 0 and ids(s.running) == ["a"]  # to fail
    s.finish(a, RequestStatus.FINISHED_ERROR)
    assert pages.freed == ["a"] and pages.num_free_pages == 2


def test_finish_frees_the_pages_wherever_the_request_is():
    pages = Pages(free=4)
    s = scheduler(pages, max_num_seqs=1)
    s.add(make("a", 1))
    s.add(make("b", 1))
    s.schedule()
    pages.take("a", 2)
    a, b = s.running[0], s.waiting[0]
    s.finish(a, RequestStatus.FINISHED_STOPPED)
    s.finish(b, RequestStatus.FINISHED_ABORTED)
    assert pages.freed == ["a", "b"] and pages.num_free_pages == 4
    assert not s.has_unfinished
    assert (a.status, b.status) == (
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_ABORTED,
    )


def test_bad_limits():
    with pytest.raises(ValueError, match="max_num_seqs=0"):
        Scheduler(0, 10, 10, Pages(free=1))
