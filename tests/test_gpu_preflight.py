"""bench/gpu.py --preflight, the parts a CPU can check: the driver/CUDA rule, the tolerances, the report lines,
skipping what a failed check leaves untestable, the first failure named, and one line without CUDA."""

import math
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import gpu  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("driver,torch_cuda,ok,words", [
    (13000, "13.0", True, "driver supports CUDA 13.0"),
    (13020, "13.0", True, "CUDA 13.2"),
    (13000, "13.2", True, "built for CUDA 13.2"),        # minor version compatibility: same major
    (12080, "13.0", False, "NVIDIA 580 or newer"),       # sglang 0.5.23's torch 2.14.1 on a 570 driver
    (12040, "12.8", True, "CUDA 12.4"),
    (11080, "12.8", False, "needs a driver for CUDA 12.x"),
    (13000, None, False, "CPU build"),
])
def test_driver_against_torch_cuda(driver, torch_cuda, ok, words):
    got, detail = gpu.cuda_compat(driver, torch_cuda)
    assert got is ok and words in detail, detail


@pytest.mark.parametrize("engine,trainer,ok", [
    ([-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5], True),
    ([-1.0, -2.0, -0.5], [-1.02, -1.97, -0.53], True),           # bf16-sized differences
    ([-1.0, -2.0, -0.5, -0.1], [-1.0, -2.0, -0.5, -0.7], False),   # one token 0.6 off: over the largest allowed
    ([-1.0] * 10, [-1.08] * 10, False),                          # every token 0.08 off: over the mean allowed
    ([-1.0, -2.0], [-1.0], False),                               # not the same tokens
    ([], [], False),
    ([math.nan], [-1.0], False),
])
def test_logprob_tolerance(engine, trainer, ok):
    got, detail = gpu.logprob_agreement(engine, trainer)
    assert got is ok, detail
    assert (gpu.LOGP_MEAN_TOL, gpu.LOGP_MAX_TOL) == (0.05, 0.5)


def test_logprob_tolerance_reports_the_figures():
    _, detail = gpu.logprob_agreement([-1.0, -2.0], [-1.1, -2.0])
    assert detail == "2 tokens, mean |engine - trainer| 0.0500 nats (tolerance 0.05), largest 0.1000 (tolerance 0.5)"


@pytest.mark.parametrize("liger,plain,ok", [(1.0, 1.0, True), (1.005, 1.0, True), (1.02, 1.0, False),
                                            (-0.3, -0.301, True), (math.nan, 1.0, False), (1e-9, 0.0, True)])
def test_loss_tolerance(liger, plain, ok):
    assert gpu.loss_agreement(liger, plain)[0] is ok


def test_checks_report_one_line_each_skip_what_a_failure_leaves_and_name_the_first_failure():
    ran, lines = [], []

    def boom():
        ran.append("engine")
        raise ImportError("No module named 'sglang'\nmore")

    checks = [
        ("cuda", lambda: ran.append("cuda") or (True, "H200"), "fix cuda", ()),
        ("engine", boom, "pip install sglang", ("cuda",)),
        ("push", lambda: ran.append("push") or (True, "x"), "fix push", ("engine",)),
        ("step", lambda: ran.append("step") or (False, "loss 1 vs 2"), "fix step", ("cuda",)),
        ("ckpt", lambda: ran.append("ckpt") or (True, "on"), "fix ckpt", ("cuda",)),
    ]
    results = gpu.run_checks(checks, emit=lines.append)
    assert ran == ["cuda", "engine", "step", "ckpt"]   # push needs the engine: not run
    assert lines == [
        "PASS  cuda: H200",
        "FAIL  engine: ImportError: No module named 'sglang' -> fix: pip install sglang",
        "SKIP  push: needs engine",
        "FAIL  step: loss 1 vs 2 -> fix: fix step",
        "PASS  ckpt: on",
    ]
    assert gpu.summary(results) == ("preflight: 2 of 5 checks passed; first failure: engine -> fix: pip install sglang", 1)
    ok = gpu.run_checks(checks[:1], emit=lambda line: None)
    assert gpu.summary(ok) == ("preflight: all 1 checks passed", 0)


def test_a_check_passes_only_where_every_rank_agrees():
    """`agree` stands for the all-reduce over ranks: a check that passed here but failed on another rank fails,
    and what needs it is skipped."""
    lines = []
    results = gpu.run_checks([("nccl", lambda: (True, "2 ranks"), "fix nccl", ()),
                              ("step", lambda: (True, "ok"), "fix step", ("nccl",))],
                             agree=lambda ok: False, emit=lines.append)
    assert [r["status"] for r in results] == ["FAIL", "SKIP"]
    assert lines[0] == "FAIL  nccl: 2 ranks -> fix: fix nccl"


def test_without_cuda_it_says_so_in_one_line_and_exits_non_zero():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu.py"), "--preflight"], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 1
    assert r.stdout.strip().splitlines() == [r.stdout.strip()] and r.stdout.startswith("FAIL  cuda: torch "), r.stdout
    assert "run the preflight on a GPU node" in r.stdout
