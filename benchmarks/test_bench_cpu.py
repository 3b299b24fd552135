"""pytest-benchmark suite for the CPU paths: ``pytest benchmarks/ --benchmark-only``.

The same providers and cases as ``benchmarks.micro`` (one definition of what is timed), at one
size, so regressions show in the standard tool (``--benchmark-compare``, ``--benchmark-json``).
Plain ``pytest`` / ``pytest tests`` never collects this file: ``testpaths = ["tests"]``.
"""

from __future__ import annotations

import pytest
import torch

import sugar_kernels as sk

from .micro import DTYPES, MODES, bytes_moved, make_case, make_inputs, make_providers

N = 1 << 20
DEVICE = "cpu"
PROVIDERS = {
    p.name: p
    for p in make_providers(DEVICE, compile_mode="off", log=lambda msg: None)
    if not p.name.startswith("sugar_reference")  # the float64 oracle: micro times it in sweeps
}
CASES = [
    (dtype, name, mode)
    for dtype in ("float32", "bfloat16")
    for name in PROVIDERS
    if dtype == "float32" or name.startswith("sugar_") or name in ("torch_relu", "copy")
    for mode in MODES
    if name != "copy" or mode == "forward"  # the copy baseline has no modes: time it once
]


@pytest.mark.skipif("cpu" not in sk.available_backends("cpu"), reason="CPU kernels not built")
@pytest.mark.parametrize(("dtype", "provider", "mode"), CASES, ids=["-".join(c) for c in CASES])
def test_cpu(benchmark, provider, dtype, mode):
    p = PROVIDERS[provider]
    case = make_case(p, mode, *make_inputs(N, DTYPES[dtype], DEVICE, seed=0))
    benchmark.group = f"{mode} {dtype} 2^{N.bit_length() - 1}"
    benchmark.extra_info["bytes"] = bytes_moved(p.kind, mode, N, DTYPES[dtype].itemsize)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    if case.setup is None:
        benchmark.pedantic(case.fn, rounds=30, iterations=1, warmup_rounds=3)
    else:  # in-place providers: a fresh input per call, made outside the timed region
        benchmark.pedantic(case.fn, setup=lambda: (case.setup(), {}), rounds=30, warmup_rounds=3)
