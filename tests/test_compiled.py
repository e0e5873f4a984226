"""The compiled step (zerocap/compiled.py): the static layout gives the reference's beams; the
fixed-size CLIP buffers give the same features; a compile that fails decodes eagerly with one
warning; and, compiled for real (slow), three captions of one config compile once, with no
graph break or recompilation, and the beams of eager decoding (speed: bench/)."""
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

from numeric import RERUN, assert_same_beams
from test_equivalence import CASES, SMALL, assert_same, reference
from zerocap import ZeroCap, ZeroCapConfig
from zerocap.modes import Target
from zerocap.scheduler import Scheduler


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # predict.py


@pytest.fixture(scope="module")
def static_engine(lm_dir, clip_file):
    """The static layout and fixed CLIP buffers, run eagerly: torch.compile as the identity, so these
    tests check the layout's arithmetic without paying for compiling."""
    real = torch.compile
    torch.compile = lambda fn, **kw: fn
    try:
        engine = ZeroCap.load(lm_dir, clip_file, device="cpu", compile=True)
        engine.scorer.compile()  # a GPU's fixed-size CLIP buffers, on the CPU
    finally:
        torch.compile = real
    assert engine.compiled is not None and engine.scorer.compiled is not None
    return engine


@RERUN
@pytest.mark.parametrize("name", ["paper defaults", "strong end token: beams stop", "empty prompt (BOS only)",
                                  "repetition, end boost from step 0"])
def test_the_static_layout_gives_the_reference_beams(static_engine, images, name):
    cfg = CASES[name]
    target = static_engine.targets.image_target(images[0])  # the references test_equivalence.py computes too
    assert_same(static_engine.caption([images[0]], config=cfg)[0], reference(static_engine, target, cfg, ("tiny", name)))


@RERUN
def test_a_static_batch_of_images_of_other_prompts(static_engine, engine, images):
    """Four requests in one static batch, every slot read at full capacity, masks for shorter
    rows: each gets the beams of its eager decoding alone."""
    cfgs = [ZeroCapConfig(**SMALL), ZeroCapConfig(**SMALL, cond_text="A photo of the"),
            ZeroCapConfig(**SMALL, cond_text="", end_factor=6.0), ZeroCapConfig(**{**SMALL, "max_tokens": 6})]
    scheduler = Scheduler(static_engine, max_batch=4)
    try:
        tickets = []
        for i, cfg in enumerate(cfgs):
            tickets.append(scheduler.submit(static_engine.request(
                Target(static_engine.targets.image_target(images[i]), images[i]), static_engine.check(cfg))))
            time.sleep(0.2 * i)  # joining at other steps
        for i, ticket in enumerate(tickets):
            alone = engine.caption([images[i]], config=cfgs[i])[0]
            assert_same_beams(ticket.result(120), alone)
        assert static_engine.compiled is not None and tickets[0].lane.batch.state.cache.slots == 4 * 3
    finally:
        scheduler.close()


@RERUN
def test_a_static_batch_of_requests_of_other_settings(static_engine, engine, images, monkeypatch):
    """Other beam sizes, top-k (candidates padded to a power of two, the extra ones unweighted),
    iterations, fusion and gradient-norm factors in one static batch: each request gets the beams
    of its eager decoding alone."""
    import zerocap.scheduler

    monkeypatch.setattr(zerocap.scheduler, "LANE_RATIO", 1e9)  # one lane: every step shared
    cfgs = [ZeroCapConfig(**SMALL), ZeroCapConfig(top_k=24, beam_size=2, max_tokens=4, num_iterations=3,
                                                  fusion_factor=0.9),
            ZeroCapConfig(top_k=40, beam_size=4, max_tokens=5, num_iterations=2, grad_norm_factor=0.6),
            ZeroCapConfig(top_k=20, beam_size=1, max_tokens=3, num_iterations=0)]
    scheduler = Scheduler(static_engine, max_batch=4)
    try:
        tickets = [scheduler.submit(static_engine.request(Target(static_engine.targets.image_target(images[i]),
                                                                 images[i]), static_engine.check(cfg)))
                   for i, cfg in enumerate(cfgs)]
        for i, ticket in enumerate(tickets):
            assert_same_beams(ticket.result(120), engine.caption([images[i]], config=cfgs[i])[0])
    finally:
        scheduler.close()


def test_a_static_step_reads_the_smallest_size_that_holds_its_requests(static_engine, engine, images, monkeypatch):
    """Compiled layouts in sizes: a lone request of 3 beams in a batch sized for 8 requests steps
    3 slots, not 24; when others join it grows to the next size (lm.step_size: 12 for 9 slots),
    and when they leave the slots are packed low again and it shrinks -- each request with its
    eager beams."""
    import zerocap.lm

    real, sizes = zerocap.lm.FastState.rows, []

    def rows(state, requests, device):
        out = real(state, requests, device)
        if state.static:
            sizes.append((len(requests), len(out.contexts)))
        return out

    monkeypatch.setattr(zerocap.lm.FastState, "rows", rows)
    cfgs = [ZeroCapConfig(**{**SMALL, "max_tokens": 8}), ZeroCapConfig(**{**SMALL, "max_tokens": 2}),
            ZeroCapConfig(**{**SMALL, "max_tokens": 3})]
    scheduler = Scheduler(static_engine, max_batch=8)
    try:
        first = scheduler.submit(static_engine.request(Target(static_engine.targets.image_target(images[0]), images[0]),
                                                       static_engine.check(cfgs[0])))
        while not first.request.steps_taken:
            time.sleep(0.01)
        others = [scheduler.submit(static_engine.request(Target(static_engine.targets.image_target(images[i]),
                                                                images[i]), static_engine.check(cfgs[i])))
                  for i in (1, 2)]
        for i, ticket in zip((0, 1, 2), [first] + others):
            assert_same_beams(ticket.result(120), engine.caption([images[i]], config=cfgs[i])[0])
        assert first.lane.batch.state.cache.slots == 8 * 3
        assert sizes[0] == (1, 3) and (3, 12) in sizes and sizes[-1] == (1, 3), sizes
    finally:
        scheduler.close()


def test_fixed_buffers_give_the_candidates_features(static_engine, engine):
    from zerocap.scorer import FastCandidates, FixedCandidates

    prefixes = ["Image of a dog", "Image of a", "", "A caf\u00e9 with"]
    g = torch.Generator().manual_seed(1)
    top = torch.randint(0, len(engine.token_strings), (4, 40), generator=g)
    top[:, 0] = 82  # "s": continues the last word
    fixed = FixedCandidates(static_engine.scorer, prefixes).features(top)
    fast = FastCandidates(engine.scorer, prefixes).features(top)
    torch.testing.assert_close(fixed, fast, rtol=1e-4, atol=1e-5)


def test_a_compile_that_fails_decodes_eagerly_with_one_warning(lm_dir, clip_file, engine, images, monkeypatch):
    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor: no C++ compiler (simulated)")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    zc = ZeroCap.load(lm_dir, clip_file, device="cpu", compile=True)
    cfg = ZeroCapConfig(**SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = zc.caption(images[:2], config=cfg)
    said = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(said) == 1 and "no C++ compiler" in said[0] and "decoding eagerly" in said[0]
    for r, image in zip(results, images[:2]):
        assert [b.text for b in r.beams] == [b.text for b in engine.caption([image], config=cfg)[0].beams]


def test_the_exact_form_is_not_compiled(capsys, images, lm_dir, clip_file):
    from zerocap.cli import main

    assert main(["caption", images[0], "--lm", lm_dir, "--clip", clip_file, "--exact", "--compile"]) == 2
    assert "--compile runs the fast form" in capsys.readouterr().err


@pytest.mark.slow
def test_three_captions_compile_once_without_breaks_and_give_the_eager_beams(tmp_path, images, lm_dir, clip_file):
    """The issue's check, through the command line: TORCH_LOGS=recompiles,graph_breaks says nothing,
    the warm-up (compile) time is reported, the beams are eager's. Then a process under avx2 compiles
    into the same cache (one built under avx512 once crashed a later avx2 process: see
    test_compiled_kernels_are_kept_apart_per_vector_unit) and gives the same beams.

    Not asserted here: that the compiled caption is no slower. It was (within 15%), and failed at
    1.24x on an AMD EPYC while another test run shared its 2 cores: a timing is a property of the
    machine and its load, not of the code, so it lives in the benchmark (bench/benchmark.py's
    eager and compiled rows, bench/RESULTS.md), never in a unit test."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", TORCH_LOGS="recompiles,graph_breaks",
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    env.pop("ATEN_CPU_CAPABILITY", None)  # the machine's own unit first
    common = [sys.executable, "-m", "zerocap", "caption", *images[:3], "--lm", lm_dir, "--clip", clip_file,
              "--device", "cpu", "--json", "--batch-size", "1", "--top-k", "128", "--beam-size", "3",
              "--max-tokens", "8"]
    eager = subprocess.run(common, capture_output=True, text=True, env=env, timeout=900)
    compiled = subprocess.run(common + ["--compile"], capture_output=True, text=True, env=env, timeout=900)
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-3000:]
    logs = [line for line in compiled.stderr.splitlines() if "Recompiling" in line or "graph break" in line.lower()]
    assert not logs, logs
    assert "zerocap: compiled the decoding step on cpu in" in compiled.stderr
    avx2 = subprocess.run(common + ["--compile"], capture_output=True, text=True, timeout=900,
                          env=dict(env, ATEN_CPU_CAPABILITY="avx2"))
    assert avx2.returncode == 0, (avx2.returncode, avx2.stderr[-3000:])
    beams = [[[x["text"] for x in json.loads(line)["beams"]] for line in run.stdout.splitlines()]
             for run in (eager, compiled, avx2)]
    assert beams[0] == beams[1] == beams[2]


@pytest.mark.slow
def test_compiled_for_real_gives_the_reference_beams(lm_dir, clip_file, images):
    zc = ZeroCap.load(lm_dir, clip_file, device="cpu", compile=True)
    target = zc.targets.image_target(images[0])
    for name in ("paper defaults", "no fluency loss, one beam"):  # one compiled engine, both cases
        cfg = CASES[name]
        assert_same(zc.caption([images[0]], config=cfg)[0], reference(zc, target, cfg, ("tiny", name)))
    assert zc.compiled.failed is None and zc.compiled.compile_seconds > 0


@pytest.mark.slow
def test_random_cases_agree_with_the_reference_compiled():
    """bench/agreement.py with the compiled form (100 cases: bench/RESULTS.md)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "agreement.py")
    run = subprocess.run([sys.executable, script, "--cases", "3", "--seed", "2", "--results", "", "--forms",
                          "fast,compiled"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| fast | 3 of 3 |" in run.stdout and "| compiled | 3 of 3 |" in run.stdout, run.stdout[-2000:]


def test_the_container_compiles_on_a_gpu_by_default_and_as_told():
    import predict

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    env = os.environ.pop("ZEROCAP_COMPILE", None)
    try:
        assert predict.compile_mode(gpu) == "reduce-overhead" and predict.compile_mode(cpu) is None
        for value, want in (("off", None), ("default", "default"), ("reduce-overhead", "reduce-overhead")):
            os.environ["ZEROCAP_COMPILE"] = value
            assert predict.compile_mode(gpu) == want
        os.environ["ZEROCAP_COMPILE"] = "fast please"
        with pytest.raises(ValueError, match="ZEROCAP_COMPILE must be auto, off, default or reduce-overhead"):
            predict.compile_mode(gpu)
    finally:
        os.environ.pop("ZEROCAP_COMPILE", None)
        if env is not None:
            os.environ["ZEROCAP_COMPILE"] = env


@pytest.mark.slow
def test_the_container_warms_up_its_compiled_step_in_setup(weights_root, images, monkeypatch, tmp_path):
    """ZEROCAP_COMPILE=default on the CPU (a GPU's default is reduce-overhead): setup compiles a full
    batch at the defaults and logs the time; predictions then decode with the compiled step."""
    import predict
    from test_predictor import Sync, sent

    for name, value in {"ZEROCAP_WEIGHTS": weights_root, "ZEROCAP_OFFLINE": "1", "ZEROCAP_DEVICE": "cpu",
                        "ZEROCAP_COMPILE": "default", "ZEROCAP_MAX_BATCH": "2",
                        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}.items():
        monkeypatch.setenv(name, value)
    p = predict.Predictor()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        p.setup()
    try:
        assert "compiled the decoding step (default) in" in log.getvalue(), log.getvalue()
        assert p.model.compiled is not None and p.model.compiled.failed is None
        out = Sync(p).run(image=sent(images[0]), beam_size=2, top_k=16, max_tokens=2)
        assert out.caption.startswith("Image of a")
    finally:
        p.scheduler.close()


def _cache_dir_under(capability, base):
    code = "from zerocap.compiled import cpu_cache_dir; print(cpu_cache_dir())"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, TORCHINDUCTOR_CACHE_DIR=base, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120).stdout.strip()


def test_compiled_kernels_are_kept_apart_per_vector_unit(tmp_path):
    """Inductor's cache does not key kernels by the vector unit they were built for: one built
    under avx512 crashed a later avx2 process (segmentation fault). Each kind of CPU gets its own
    folder inside the cache chosen."""
    base = str(tmp_path / "inductor")
    default, avx2 = _cache_dir_under("default", base), _cache_dir_under("avx2", base)
    assert os.path.dirname(default) == os.path.dirname(avx2) == base
    assert os.path.basename(default).startswith("default-") and os.path.basename(avx2).startswith("avx2-")
    assert _cache_dir_under("avx2", avx2) == avx2  # already a CPU's folder: kept
