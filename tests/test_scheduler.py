"""Continuous batching (zerocap/scheduler.py): a request's beams are those it gets decoded alone,
whatever it shares the steps with and whenever it joins; cancelling, failing or running out of
memory touches only the request concerned."""
import threading
import time

import pytest
import torch

from numeric import assert_same_beams
from zerocap import ZeroCapConfig
from zerocap.modes import Target
from zerocap.scheduler import OUT_OF_MEMORY, Cancelled, Scheduler

pytestmark = pytest.mark.numeric  # CI runs these under every ATEN_CPU_CAPABILITY too

SMALL = dict(top_k=32, beam_size=3, max_tokens=5)


@pytest.fixture(scope="module")
def targets(engine, images):
    return [Target(engine.targets.image_target(p), p) for p in images]


# configs of one group (same beam_size, top_k, iterations, fusion and grad-norm factors), everything
# else different: prompt lengths, max_tokens, end token boost (early-finishing beams), scales
CONFIGS = [
    ZeroCapConfig(**SMALL),
    ZeroCapConfig(**{**SMALL, "max_tokens": 3}, cond_text="A photo of the", end_factor=1.5, clip_scale=2.0),
    ZeroCapConfig(**{**SMALL, "max_tokens": 7}, cond_text="", end_factor=8.0, stepsize=0.6, repetition_penalty=1.4),
    ZeroCapConfig(**SMALL, cond_text="Image of", end_factor_from=0, ce_scale=0.5, clip_temperature=0.05),
]


@pytest.fixture(scope="module")
def alone(engine, targets):
    """Each (target, config) decoded on its own."""
    return {(i, j): engine.decode_targets([targets[i]], engine.check(cfg))[0]
            for i in range(4) for j, cfg in enumerate(CONFIGS) if i == j or (i, j) == (0, 2)}


def beams(result):
    return [b.text for b in result.beams]


def assert_alone(result, reference):
    assert_same_beams(result, reference)


class Gate:
    """Holds the scheduler's loop at each step until released: joins at chosen steps."""

    def __init__(self, engine, monkeypatch):
        import zerocap.batch

        self.steps, self.go = 0, threading.Semaphore(0)
        real = zerocap.batch.Batch.step

        def step(batch, only=None):
            self.go.acquire()
            out = real(batch, only)
            self.steps += 1
            return out

        monkeypatch.setattr(zerocap.batch.Batch, "step", step)

    def run(self, n=1, tickets=()):
        """Let n steps run (fewer when every ticket is done first)."""
        before = self.steps
        for _ in range(n):
            self.go.release()
        deadline = time.time() + 60
        while self.steps < before + n and time.time() < deadline and not (tickets and all(t.done() for t in tickets)):
            time.sleep(0.005)


def test_requests_joining_at_other_steps_get_their_alone_beams(engine, targets, alone, monkeypatch):
    """Four requests of one group join at steps 0, 1, 2 and 4 of the first; they differ in prompt,
    length, end boost (beams that stop early), scales and temperature; each gets its beams alone."""
    gate = Gate(engine, monkeypatch)
    scheduler = Scheduler(engine, max_batch=8)
    try:
        tickets = []
        for i, joins_after in enumerate([0, 1, 1, 2]):
            gate.run(joins_after)
            tickets.append(scheduler.submit(engine.request(targets[i], engine.check(CONFIGS[i]))))
            time.sleep(0.05)
        while not all(t.done() for t in tickets):
            gate.run(1, tickets)
        for i, ticket in enumerate(tickets):
            assert_alone(ticket.result(), alone[(i, i)])
        assert max(max(t.request.shared) for t in tickets) >= 3  # they did share steps
        assert [t.request.shared[0] for t in tickets][1:] != [1, 1, 1]
    finally:
        gate.go.release(1000)
        scheduler.close()


def test_the_same_image_twice_with_other_settings_in_one_batch(engine, targets, alone):
    scheduler = Scheduler(engine, max_batch=8)
    try:
        a = scheduler.submit(engine.request(targets[0], engine.check(CONFIGS[0])))
        b = scheduler.submit(engine.request(targets[0], engine.check(CONFIGS[2])))
        assert_alone(a.result(60), alone[(0, 0)])
        assert_alone(b.result(60), alone[(0, 2)])
    finally:
        scheduler.close()


def test_another_group_waits_and_comes_next(engine, targets):
    scheduler = Scheduler(engine, max_batch=8)
    try:
        first = scheduler.submit(engine.request(targets[0], engine.check(ZeroCapConfig(**SMALL))))
        other = scheduler.submit(engine.request(targets[1], engine.check(ZeroCapConfig(**{**SMALL, "beam_size": 2}))))
        same = scheduler.submit(engine.request(targets[2], engine.check(ZeroCapConfig(**SMALL))))
        for t in (first, other, same):
            t.result(60)
        assert set(other.request.shared) == {1}  # never with the other group
        assert set(first.request.shared) == {1}  # `same` could have joined it, but came after `other`
        assert first.started < other.started < same.started  # first come, first served, group by group
    finally:
        scheduler.close()


def test_cancelling_one_of_four_leaves_the_other_three(engine, targets, alone, monkeypatch):
    gate = Gate(engine, monkeypatch)
    scheduler = Scheduler(engine, max_batch=8)
    try:
        cancelled = CONFIGS[1].replace(max_tokens=7, end_factor=1.01)  # still decoding when cancelled
        cfgs = [CONFIGS[0], cancelled, CONFIGS[2], CONFIGS[3]]
        tickets = [scheduler.submit(engine.request(targets[i], engine.check(cfgs[i]))) for i in range(4)]
        time.sleep(0.1)
        gate.run(2)
        tickets[1].cancel()
        while not all(t.done() for t in tickets):
            gate.run(1, tickets)
        with pytest.raises(Cancelled):
            tickets[1].result()
        for i in (0, 2, 3):
            assert_alone(tickets[i].result(), alone[(i, i)])
        assert len(tickets[1].request.shared) <= 3  # it left at the next step boundary
    finally:
        gate.go.release(1000)
        scheduler.close()


def test_a_request_whose_own_part_fails_fails_alone(engine, targets, alone):
    def bad_progress(step, total, best):
        if step == 2:
            raise RuntimeError("the client went away")

    scheduler = Scheduler(engine, max_batch=8)
    try:
        good = [scheduler.submit(engine.request(targets[i], engine.check(CONFIGS[i]))) for i in (0, 3)]
        bad = scheduler.submit(engine.request(targets[1], engine.check(CONFIGS[0]), bad_progress))
        with pytest.raises(RuntimeError, match="the client went away"):
            bad.result(60)
        assert_alone(good[0].result(60), alone[(0, 0)])
        assert_alone(good[1].result(60), alone[(3, 3)])
        assert scheduler.health() is None
    finally:
        scheduler.close()


def test_out_of_memory_splits_the_batch_and_fails_only_what_cannot_fit(engine, targets, alone, monkeypatch):
    """A step of more than two requests runs out of memory: the batch is stepped in halves and
    every request gets its beams; a request out of memory on its own fails with advice."""
    import zerocap.batch

    real = zerocap.batch.Batch._logprobs
    limit = [2]

    def tight(batch, requests, rows):
        if len(requests) > limit[0]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch, requests, rows)

    monkeypatch.setattr(zerocap.batch.Batch, "_logprobs", tight)
    scheduler = Scheduler(engine, max_batch=8)
    try:
        tickets = [scheduler.submit(engine.request(targets[i], engine.check(CONFIGS[i]))) for i in range(4)]
        for i, t in enumerate(tickets):
            assert_alone(t.result(120), alone[(i, i)])
        assert all(max(t.request.shared) <= 2 for t in tickets)
        limit[0] = 0  # now nothing fits
        ticket = scheduler.submit(engine.request(targets[0], engine.check(CONFIGS[0])))
        with pytest.raises(Exception, match=OUT_OF_MEMORY):
            ticket.result(60)
        assert scheduler.health() is None  # the loop goes on
    finally:
        scheduler.close()


def test_a_broken_device_makes_the_health_check_fail(engine, targets, monkeypatch):
    import zerocap.batch

    def broken(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    scheduler = Scheduler(engine, max_batch=8)
    try:
        assert scheduler.health() is None
        monkeypatch.setattr(zerocap.batch.Batch, "_logprobs", broken)
        ticket = scheduler.submit(engine.request(targets[0], engine.check(CONFIGS[0])))
        with pytest.raises(RuntimeError, match="illegal memory access"):
            ticket.result(60)
        assert "illegal memory access" in scheduler.health()
        with pytest.raises(RuntimeError, match="the decoder cannot run"):
            scheduler.submit(engine.request(targets[0], engine.check(CONFIGS[0])))
    finally:
        scheduler.close()
