"""Continuous batching (zerocap/scheduler.py): a request's beams are those it gets decoded alone,
whatever it shares the steps with -- any settings -- and whenever it joins; a heavy request does
not stop light ones; cancelling, failing or running out of memory touches only the request
concerned."""
import threading
import time

import pytest
import torch

from numeric import RERUN, assert_same_beams
from zerocap import ZeroCapConfig
from zerocap.modes import Target
from zerocap.scheduler import OUT_OF_MEMORY, Cancelled, Scheduler


SMALL = dict(top_k=32, beam_size=3, max_tokens=5)


@pytest.fixture(scope="module")
def targets(engine, images):
    return [Target(engine.targets.image_target(p), p) for p in images]


# configs of one shape (same beam_size, top_k, iterations, fusion and grad-norm factors), everything
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


@RERUN
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


@RERUN
def test_the_same_image_twice_with_other_settings_in_one_batch(engine, targets, alone):
    scheduler = Scheduler(engine, max_batch=8)
    try:
        a = scheduler.submit(engine.request(targets[0], engine.check(CONFIGS[0])))
        b = scheduler.submit(engine.request(targets[0], engine.check(CONFIGS[2])))
        assert_alone(a.result(60), alone[(0, 0)])
        assert_alone(b.result(60), alone[(0, 2)])
    finally:
        scheduler.close()


# requests of other settings of every kind: beams, candidates, iterations, fusion, gradient norm
MIXED = [
    ZeroCapConfig(**SMALL),
    ZeroCapConfig(top_k=24, beam_size=2, max_tokens=4, num_iterations=3, fusion_factor=0.9),
    ZeroCapConfig(top_k=48, beam_size=4, max_tokens=5, num_iterations=2, grad_norm_factor=0.6, cond_text="A photo of"),
    ZeroCapConfig(top_k=40, beam_size=1, max_tokens=3, num_iterations=0),
]


@pytest.fixture(scope="module")
def mixed_alone(engine, targets):
    return [engine.decode_targets([targets[i]], engine.check(cfg))[0] for i, cfg in enumerate(MIXED)]


@RERUN
def test_requests_of_any_settings_share_steps_and_get_their_alone_beams(engine, targets, mixed_alone, monkeypatch):
    """Other beam sizes, top-k, iterations (0 included: the plain LM), fusion and gradient-norm
    factors in one step: each request gets the beams it gets alone."""
    import zerocap.scheduler

    monkeypatch.setattr(zerocap.scheduler, "LANE_RATIO", 1e9)  # one lane: every step shared
    gate = Gate(engine, monkeypatch)
    scheduler = Scheduler(engine, max_batch=8)
    try:
        tickets = [scheduler.submit(engine.request(targets[i], engine.check(cfg))) for i, cfg in enumerate(MIXED)]
        time.sleep(0.05)
        while not all(t.done() for t in tickets):
            gate.run(1, tickets)
        for ticket, alone_result in zip(tickets, mixed_alone):
            assert_same_beams(ticket.result(), alone_result)
        assert all(4 in t.request.shared for t in tickets)  # all four shared steps
    finally:
        gate.go.release(1000)
        scheduler.close()


def test_a_heavy_request_does_not_stop_light_ones(engine, targets, monkeypatch):
    """A request whose step costs many times the others' runs in its own lane; the lanes take
    turns step by step, fairly by time: light requests sent while it decodes keep finishing,
    long before it ends, and it finishes too."""
    import zerocap.batch

    heavy_cfg = ZeroCapConfig(top_k=256, beam_size=6, max_tokens=12, num_iterations=6)
    light_cfg = ZeroCapConfig(top_k=16, beam_size=2, max_tokens=2, num_iterations=2)
    heavy_cost = engine.request(targets[0], engine.check(heavy_cfg)).cost
    assert heavy_cost > 4 * engine.request(targets[0], engine.check(light_cfg)).cost  # another lane
    real, steps = zerocap.batch.Batch.step, []

    def counted(batch, only=None):
        steps.append(max(r.cost for r in (only or batch.requests)) == heavy_cost)
        return real(batch, only)

    monkeypatch.setattr(zerocap.batch.Batch, "step", counted)
    scheduler = Scheduler(engine, max_batch=8)
    try:
        heavy = scheduler.submit(engine.request(targets[0], engine.check(heavy_cfg)))
        while not heavy.request.steps_taken:
            time.sleep(0.01)
        lights = [scheduler.submit(engine.request(targets[1 + i % 3], engine.check(light_cfg))) for i in range(6)]
        for t in lights:
            t.result(120)
        assert not heavy.done(), "the light requests finished while the heavy one decoded"
        assert len({t.lane for t in lights}) == 1 and heavy.lane not in {t.lane for t in lights}
        first_light = steps.index(False)
        assert steps[first_light:first_light + 3] == [False, True, False]  # turns, step by step
        heavy.result(300)
        assert heavy.request.steps_taken == 12 and steps.count(True) == 12 and steps.count(False) == 2
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
    def bad_progress(snapshot):
        if snapshot.step == 2:
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
