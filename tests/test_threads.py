"""A thread done with CPU work hands its OpenMP pool back (zerocap/threads.py)."""
import os
import threading
import time

import pytest
import torch

from zerocap import threads


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(threads._pause() is None or torch.get_num_threads() < 2,
                    reason="PyTorch without libgomp here, or one intra-op thread: no pool to free")
def test_a_thread_that_ran_parallel_kernels_frees_its_pool():
    counts = {}

    def work():
        x = torch.randn(512, 512)
        for _ in range(3):
            x = torch.sigmoid(x @ x)  # parallel kernels: this thread now has a pool of workers
        counts["with pool"] = _threads()
        threads.release_pool()
        for _ in range(100):  # the pool's threads exit
            if _threads() < counts["with pool"]:
                break
            time.sleep(0.01)
        counts["released"] = _threads()
        y = torch.randn(512, 512)
        counts["after"] = float(torch.sigmoid(y @ y).sum())  # a new pool serves the next kernels

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert counts["released"] < counts["with pool"], counts
    assert counts["after"] == counts["after"]  # finite: kernels still run


# ---- how many threads -------------------------------------------------------------------------------
def _run(code: str, **env) -> str:
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ZEROCAP_THREADS",
                                                              "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_cgroup_quota_bounds_the_threads_v1_and_v2(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job" / "inner").mkdir(parents=True)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "job" / "cpu.max").write_text("150000 100000\n")  # docker --cpus=1.5, one level up
    (v2 / "job" / "inner" / "cpu.max").write_text("max 100000\n")
    assert threads.quota(str(v2), "0::/job/inner\n") == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker" / "abc").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.quota(str(v1), "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n") == 2.0
    assert threads.quota(str(v1), "2:cpu,cpuacct:/\n") is None  # -1: no quota
    assert threads.quota(str(tmp_path / "none"), "0::/\n") is None


def test_the_users_count_wins_and_the_choice_is_said():
    assert _run("import zerocap.threads as t; print(t.choose(0).line())", ZEROCAP_THREADS="3") \
        == "3 CPU threads (ZEROCAP_THREADS=3)"
    assert _run("import zerocap.threads as t; print(t.choose(0).line())", OMP_NUM_THREADS="1") \
        == "1 CPU thread (OMP_NUM_THREADS=1)"
    n = len(os.sched_getaffinity(0))  # without a window no load is measured: every allowed CPU
    assert _run("import zerocap.threads as t; print(t.choose(0).threads)") == str(n)


def test_idle_workers_sleep_soon_unless_the_user_set_the_wait_policy():
    code = "import os, zerocap, torch; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    assert _run(code) == "100000 None"  # a pool sized to the free CPUs: ~1 ms
    assert _run(code, ZEROCAP_THREADS="2") == "10000 None"  # a count the user fixed: ~0.1 ms
    assert _run(code, OMP_NUM_THREADS="2") == "10000 None"
    assert _run(code, OMP_WAIT_POLICY="ACTIVE") == "None ACTIVE"
    assert _run(code, GOMP_SPINCOUNT="5") == "5 None"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to give back")
def test_a_cpu_another_process_keeps_busy_is_left_to_it(monkeypatch):
    """A CPU hog pinned to one of two CPUs: the pool gets the other alone, at start and while a
    loop decodes (the Sizer). (Whether it takes both again once the hog is gone depends on what
    else the machine runs: not asserted.)"""
    import subprocess
    import sys

    two = sorted(os.sched_getaffinity(0))[:2]
    monkeypatch.setattr(threads, "allowed_cpus", lambda: two)
    monkeypatch.setattr(threads, "quota", lambda *a, **k: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ZEROCAP_THREADS", raising=False)
    hog = subprocess.Popen(["taskset", "-c", str(two[0]), sys.executable, "-c", "while True: pass"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # (an engine loaded earlier on a busy machine may have set 1)
    try:
        time.sleep(0.3)
        choice = threads.choose(window=0.5)
        # (1 busy at least: the hog's; more when the machine runs other work too -- a shared CI)
        assert choice.threads == 1 and "busy with other processes" in choice.why, choice
        monkeypatch.setattr(threads, "_CHOICE", threads.Choice(2, "test", False))
        sizer = threads.Sizer(interval=0)
        time.sleep(0.5)
        assert sizer.tick() == 1 and torch.get_num_threads() == 1
    finally:
        hog.kill()
        hog.wait()
        torch.set_num_threads(before)
