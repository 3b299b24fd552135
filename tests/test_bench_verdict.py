"""benchmarks.common: verdicts (met / missed / inconclusive, never a claim from overlapping spreads
or a busy machine) and the quiet-machine gate (other processes' CPU time, never our own)."""

import subprocess
import sys
import time

import pytest

from benchmarks import common, micro

QUIET, BUSY = 0.0, 2.0 * common.busy_threshold()  # cores other processes used
SPIN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass"


def test_separated_bands_decide():
    fast = [1.0, 1.02, 0.98, 1.01, 0.99]
    slow = [2.0, 2.05, 1.95, 2.02, 1.98]
    assert common.verdict(fast, slow, 1.0, others=QUIET) == "met"
    assert common.verdict(slow, fast, 1.0, others=QUIET) == "missed"
    # the limit scales the baseline: 1.0 ms is not <= 0.4 x 2.0 ms
    assert common.verdict(fast, slow, 0.4, others=QUIET) == "missed"
    assert common.verdict(fast, slow, 0.6, others=QUIET) == "met"
    assert common.verdict(fast, slow, 1.0, others=None) == "met"  # no /proc: not gated


def test_overlapping_spread_is_inconclusive():
    # medians differ by 10%, but the p20-p80 bands overlap: the repetitions cannot separate them
    ours = [0.8, 0.9, 1.0, 1.1, 1.2]
    base = [0.9, 1.0, 1.1, 1.2, 1.3]
    assert common.verdict(ours, base, 1.0, others=QUIET) == "inconclusive"


def test_busy_machine_is_never_met():
    fast, slow = [1.0] * 5, [2.0] * 5
    assert common.is_busy(BUSY) and not common.is_busy(QUIET) and not common.is_busy(None)
    assert "BUSY" in common.busy_note(BUSY) and "quiet" in common.busy_note(QUIET)
    assert common.verdict(fast, slow, 1.0, others=BUSY) == "inconclusive"
    assert common.verdict(slow, fast, 1.0, others=BUSY) == "inconclusive"
    assert common.busy_threshold(2) == 0.25 and common.busy_threshold(16) == 1.0


@pytest.mark.parametrize("bad", [[], [float("nan")] * 3, [0.0] * 3])
def test_missing_or_broken_times_are_inconclusive(bad):
    assert common.verdict(bad, [1.0] * 3, 1.0, others=QUIET) == "inconclusive"


def _row(provider, ms, others=QUIET):
    times = [ms * f * 1e-3 for f in (0.98, 0.99, 1.0, 1.01, 1.02)]
    p20, p50, p80 = (1e3 * v for v in common.spread(times))
    key = dict(provider=provider, mode="full", dtype="float32", numel=1 << 22, bytes=20 << 22)
    return key | dict(others_cores=others, median_ms=p50, p20_ms=p20, p80_ms=p80, samples=times)


def test_micro_targets_use_the_verdict():
    rows = [_row("sugar_cpu", 3.0), _row("torch_gelu", 4.5), _row("paper", 14.0)]
    rows.append(_row("torch_relu", 2.0))
    got = {t: v for t, _, v in micro.check_targets(rows, "cpu")}
    assert list(got.values()) == ["met", "met", "missed"]
    assert all(t.startswith("CPU f32 2^22 fwd+bwd") and "sugar_cpu <=" in t for t in got)
    # the same numbers taken while others kept the CPUs busy decide nothing
    busy = [dict(r, others_cores=BUSY) for r in rows]
    assert {v for _, _, v in micro.check_targets(busy, "cpu")} == {"inconclusive"}
    # the GPU targets: % of copy, ratios, Triton against CUDA
    gpu = [dict(_row(p, ms), numel=1 << 26) for p, ms in [("sugar_cuda", 1.0), ("copy", 0.8)]]
    gpu += [dict(_row("sugar_triton", 1.5), numel=1 << 26)]
    got = {t: v for t, _, v in micro.check_targets(gpu, "cuda")}
    assert got["float32 2^26 full: Triton within 10% of CUDA"] == "missed"


def test_quantile_verdicts_match_sample_verdicts():
    fast, slow = [1.0, 1.1, 1.2, 1.3], [2.0, 2.1, 2.2, 2.3]
    for limit in (0.4, 1.0):
        by_q = common.verdict_from_quantiles(
            common.spread(fast), common.spread(slow), limit, others=0
        )
        assert by_q == common.verdict(fast, slow, limit, others=0)


def _spin(seconds: float, orphan: bool) -> subprocess.Popen:
    code = SPIN.format(s=seconds)
    if orphan:  # a grandchild whose parent exits at once: no longer in this process tree
        cmd = [sys.executable, "-c", f"import subprocess, sys; subprocess.Popen([sys.executable, "
               f"'-c', {code!r}])"]  # fmt: skip
        return subprocess.Popen(cmd)
    return subprocess.Popen([sys.executable, "-c", code])


def test_gate_counts_others_not_our_own_children():
    ticks = common.CLOCK_TICKS
    # a busy child of ours is our own work: in the tree's ticks
    before = common.tree_ticks()
    child = _spin(1.0, orphan=False)
    child.wait()
    assert common.tree_ticks() - before >= 0.3 * ticks  # it got a third of a core at least
    # a busy process outside the tree is other work: in the machine's ticks, not in ours
    parent = _spin(1.5, orphan=True)
    parent.wait()
    time.sleep(0.2)  # the orphan started
    window = common.CpuWindow()
    tree0 = common.tree_ticks()
    time.sleep(1.0)
    others = window.others()
    assert common.tree_ticks() - tree0 <= 0.2 * ticks  # we slept
    assert others is not None and others >= 0.2  # the orphan got a fifth of a core at least
    time.sleep(0.5)  # let the orphan finish


def test_short_windows_are_widened(monkeypatch):
    monkeypatch.setattr(common, "_HISTORY", [])
    t0 = time.perf_counter()
    common.CpuWindow().others()  # no earlier snapshot: waits until the window spans WINDOW_S
    assert time.perf_counter() - t0 >= common.WINDOW_S
    t1 = time.perf_counter()
    common.CpuWindow().others()  # widened backwards to the earlier snapshots: no wait
    assert time.perf_counter() - t1 < common.WINDOW_S / 2
