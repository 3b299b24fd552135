"""benchmarks.common.verdict: met / missed / inconclusive, never "met" on a loaded machine or when
the spread between repetitions is wider than the difference; micro's targets table uses it."""

import os
import subprocess
import sys

import pytest

from benchmarks import common, micro

QUIET = 0.1  # a load average that counts as quiet on any machine
BUSY = 2.0 * (os.cpu_count() or 1) + 1  # and one that counts as loaded here


def test_separated_bands_decide():
    fast = [1.0, 1.02, 0.98, 1.01, 0.99]
    slow = [2.0, 2.05, 1.95, 2.02, 1.98]
    assert common.verdict(fast, slow, 1.0, load=QUIET) == "met"
    assert common.verdict(slow, fast, 1.0, load=QUIET) == "missed"
    # the target ratio scales the baseline: 1.0 ms is not <= 0.4 x 2.0 ms
    assert common.verdict(fast, slow, 0.4, load=QUIET) == "missed"
    assert common.verdict(fast, slow, 0.6, load=QUIET) == "met"


def test_overlapping_spread_is_inconclusive():
    # medians differ by 10%, but the p20-p80 bands overlap: the repetitions cannot separate them
    ours = [0.8, 0.9, 1.0, 1.1, 1.2]
    base = [0.9, 1.0, 1.1, 1.2, 1.3]
    assert common.verdict(ours, base, 1.0, load=QUIET) == "inconclusive"


def test_loaded_machine_is_never_met():
    fast, slow = [1.0] * 5, [2.0] * 5
    cores = 2
    busy = 1.0  # one of 2 cores kept busy by others
    assert common.loaded(busy, cores) and not common.loaded(0.6, cores)
    assert common.machine_load_note(busy, cores).startswith("machine loaded")
    assert common.machine_load_note(0.6, cores) is None
    assert common.verdict(fast, slow, 1.0, load=BUSY) == "inconclusive"
    assert common.verdict(slow, fast, 1.0, load=BUSY) == "inconclusive"


@pytest.mark.parametrize("bad", [[], [float("nan")] * 3, [0.0] * 3])
def test_missing_or_broken_times_are_inconclusive(bad):
    assert common.verdict(bad, [1.0] * 3, 1.0, load=QUIET) == "inconclusive"


def _row(provider, ms, load="0.10"):
    times = [ms * f * 1e-3 for f in (0.98, 0.99, 1.0, 1.01, 1.02)]
    p20, p50, p80 = (1e3 * v for v in common.spread(times))
    return {
        "device": "cpu",
        "provider": provider,
        "mode": "full",
        "dtype": "float32",
        "numel": 1 << 22,
        "bytes": 5 * 4 * (1 << 22),
        "load": load,
        "median_ms": p50,
        "p20_ms": p20,
        "p80_ms": p80,
        "samples": times,
    }


def test_micro_targets_use_the_verdict():
    rows = [_row("sugar_cpu", 3.0), _row("torch_gelu", 4.5), _row("paper", 14.0)]
    rows.append(_row("torch_relu", 2.0))
    got = {t: v for t, _, v in micro.check_targets(rows)}
    assert got["CPU f32 2^22 fwd+bwd: sugar_cpu <= torch_gelu"] == "met"
    assert got["CPU f32 2^22 fwd+bwd: sugar_cpu <= 0.5x paper"] == "met"
    assert got["CPU f32 2^22 fwd+bwd (stretch): sugar_cpu <= 1.3x torch_relu"] == "missed"
    # rows read back from a CSV have no samples: the p20/median/p80 decide the same way
    csv_rows = [{k: v for k, v in r.items() if k != "samples"} for r in rows]
    assert {t: v for t, _, v in micro.check_targets(csv_rows)} == got
    # the same numbers from a loaded run decide nothing
    loaded = [dict(r, load=str(BUSY)) for r in rows]
    assert {v for _, _, v in micro.check_targets(loaded)} == {"inconclusive"}


def test_make_bench_steps_judge_the_load_from_the_run_start(tmp_path, monkeypatch):
    # benchmarks.run starts most steps as child processes; each must judge the machine by the
    # load when the whole run started, not by the load average at its own start, which counts
    # the earlier steps' own work (and so made every later verdict "inconclusive").
    import benchmarks
    from benchmarks import run

    monkeypatch.setattr(run, "START_LOAD", 0.375)  # the run's start load, unlike any real one
    code = "import benchmarks; print(repr(benchmarks.START_LOAD))"
    status, out, _ = run.run_cli(["-c", code], 120, tmp_path / "log.txt")
    assert status == 0
    assert out.strip().splitlines()[-1] == "0.375"
    env = dict(os.environ, **{benchmarks.START_LOAD_ENV: "0.125"})
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "0.125", done.stderr[-2000:]
