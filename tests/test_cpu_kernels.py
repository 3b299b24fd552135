"""The CPU kernels' fast paths for code modes, each against the reference (code_tables.py).

The forward picks one of three code searches by table size: in-register groups (<= 64
thresholds), a cell grid (larger tables; built once per table content and cached), the bucket
search (tables no grid of <= 65536 cells separates); 16-element SIMD steps are followed by a
scalar tail. Where torch runs AVX-512, the AVX-512 build runs 32-element chunks: one threshold
(every bits=1 table) by a compare, small tables (< 8 / 32 / 32 thresholds at bits 2 / 4 / 8) by a
register binary search, larger ones through the same cell grid with 8-lane gathers. Every
path must give exactly code_tables.py's codes, and y bit-identical to torch.relu; the AVX2 paths are
checked against the dispatched ones in a subprocess with ATEN_CPU_CAPABILITY=avx2.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sugar_kernels as sk
from sugar_kernels import code_tables as C

pytestmark = pytest.mark.skipif(not sk.build_info()["cpu_compiled"], reason="no CPU kernels")

STEP = 16  # elements per SIMD step in csrc/cpu_codes_avx2.h


def _input(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 3).to(dtype)
    specials = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1e-30, 1e-30]
    x[: min(n, len(specials))] = torch.tensor(specials[:n]).to(dtype)
    return x


def _check_forward(x, thresholds, interval_codes, search, bits, levels=None):
    if levels is None:
        levels = torch.zeros(1 << bits, dtype=thresholds.dtype)
    y, packed = torch.ops.sugar.relu_forward_codes(
        x, levels, thresholds, interval_codes, search, bits
    )
    assert torch.equal(packed, C.encode_reference(x, thresholds, interval_codes, bits))
    assert torch.equal(y.view(torch.uint8), torch.relu(x).view(torch.uint8))
    inplace = x.clone()
    packed_ = torch.ops.sugar.relu_forward_codes_(
        inplace, levels, thresholds, interval_codes, search, bits
    )
    assert torch.equal(packed_, packed)
    assert torch.equal(inplace.view(torch.uint8), y.view(torch.uint8))


# (surrogate, region, bits, n): register search (bits 1/2/4) with tails of every length mod the
# step; bits 8 through the cell grid (bsilu needs ~2k cells, selu "all" the finest grid, 65536
# cells) on small tensors and on large ones (several parallel chunks).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "name,region,bits,n",
    [
        ("bsilu", "all", 1, 3 * STEP + 1),
        ("bsilu", "negative", 2, 5 * STEP + 7),
        ("nelu", "negative", 4, 7 * STEP + 15),  # 29 thresholds: 8 groups of 4
        ("gelu", "all", 4, 1),
        ("leaky_relu", "all", 8, 2 * STEP + 3),
        ("bsilu", "all", 8, 1000),
        ("bsilu", "all", 8, (1 << 16) + 9),
        ("nelu", "negative", 8, (1 << 18) + 5),
        ("selu", "all", 8, (1 << 20) + 3),
    ],
)
def test_code_search_paths_match_reference(dtype, name, region, bits, n):
    alpha = sk.SURROGATES[name].alpha or 0.0
    levels, thresholds, interval_codes = C.tables(name, alpha, region, bits, "cpu", dtype)
    search = C.search_table(name, alpha, region, bits, "cpu", dtype)
    _check_forward(_input(n, dtype), thresholds, interval_codes, search, bits, levels)


@pytest.mark.parametrize("n", [1, STEP - 1, STEP, 4 * STEP + 9])
def test_every_tail_length_float32(n):
    for bits in C.BITS:
        levels, thresholds, interval_codes = C.tables(
            "mish", None, "all", bits, "cpu", torch.float32
        )
        search = C.search_table("mish", None, "all", bits, "cpu", torch.float32)
        _check_forward(_input(n, torch.float32, seed=n), thresholds, interval_codes, search, bits)


def _search_for(thresholds: torch.Tensor) -> torch.Tensor:
    """code_tables.py's search table for arbitrary sorted float32 thresholds (same construction)."""
    t = thresholds.double().numpy()
    b = C.SEARCH_BUCKETS
    width = (t[-1] - t[0]) / b
    edges = t[0] + width * np.arange(b + 3, dtype=np.float64) - width
    starts = np.searchsorted(t, edges[:b], side="left")
    ends = np.searchsorted(t, edges[3:], side="right")
    return torch.tensor([int((ends - starts).max()), *starts.tolist()], dtype=torch.int32)


def test_table_no_grid_separates_uses_exact_fallback():
    # 100 thresholds, two of them 2^-20 apart on a span of 100: no grid of <= 65536 cells
    # separates them, so the kernel falls back to the bucket search, still exact.
    t = torch.linspace(-50, 50, 100, dtype=torch.float32)
    t[50] = t[49] + 2.0**-20
    t, _ = torch.sort(t)
    interval_codes = (torch.arange(101) * 37 % 256).to(torch.uint8)
    x = _input((1 << 20) + 1, torch.float32)
    x[100:200] = t[49] + torch.rand(100) * 2.0**-20  # right between the two close thresholds
    _check_forward(x, t, interval_codes, _search_for(t), 8)


def test_cell_grid_cache_follows_table_content():
    # The bits=8 grid is cached by table content: tables rewritten in place (same storage) and
    # more tables than the cache holds still give exactly the reference codes.
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(-50, 50, 100, dtype=torch.float32)
    interval_codes = torch.randint(0, 256, (101,), generator=g, dtype=torch.uint8)
    search = _search_for(t)
    x = _input(3000, torch.float32) * 10
    for step in range(20):
        t.mul_(0.9).add_(0.5)  # still sorted, every threshold moved
        interval_codes.copy_(torch.randint(0, 256, (101,), generator=g, dtype=torch.uint8))
        search.copy_(_search_for(t))
        _check_forward(x, t, interval_codes, search, 8)
        if step % 7 == 0:  # the same content in other storage: the cached grid is reused
            _check_forward(x, t.clone(), interval_codes.clone(), search.clone(), 8)


@pytest.mark.parametrize("bits", C.BITS)
def test_unsorted_table_stays_in_bounds(bits):
    # A corrupt (unsorted) table may give wrong codes, or be rejected, but never a crash or an
    # out-of-range code.
    g = torch.Generator().manual_seed(bits)
    count = 40 if bits < 8 else 300
    t = torch.randn(count, generator=g) * 5
    interval_codes = torch.randint(0, 1 << bits, (count + 1,), generator=g, dtype=torch.uint8)
    search = _search_for(torch.sort(t).values)
    levels = torch.zeros(1 << bits)
    try:
        _, packed = torch.ops.sugar.relu_forward_codes(
            _input(1 << 16, torch.float32), levels, t, interval_codes, search, bits
        )
    except (RuntimeError, ValueError):
        return  # rejected by the host checks: fine
    assert int(C.unpack(packed, bits, 1 << 16).max()) < (1 << bits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits", C.BITS)
def test_backward_codes_match_reference(dtype, bits):
    n = 64 * STEP + 13
    g = torch.Generator().manual_seed(bits)
    grad = torch.randn(n, generator=g).to(dtype)
    packed = torch.randint(0, 256, (C.packed_size(n, bits),), generator=g, dtype=torch.uint8)
    levels = torch.randn(1 << bits, generator=g)
    out = torch.ops.sugar.relu_backward_codes(grad, packed, levels, bits)
    assert torch.equal(out, C.decode_reference(grad, packed, levels, bits))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_exact_forward_every_16bit_pattern(dtype):
    # The half/bfloat16 forward works on the bits: check all 65536 patterns against x < 0 ? 0 : x
    # (NaN payloads and -0.0 kept).
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    y = torch.ops.sugar.relu_forward(x, "bsilu", 1.67, "all")
    assert torch.equal(y.view(torch.int16), torch.where(x < 0, 0, x).view(torch.int16))


def _kernel_results(x, grad):
    """Every exact kernel's result, code-mode forwards of every search path and their backwards."""
    out = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        xd, gd = x.to(dtype), grad.to(dtype)
        out["forward", dtype] = torch.ops.sugar.relu_forward(xd, "bsilu", 1.67, "all")
        for name, spec in sk.SURROGATES.items():
            for region in ("all", "negative"):
                out["backward", dtype, name, region] = torch.ops.sugar.relu_backward(
                    gd, xd, name, spec.alpha or 0.0, region
                )
    for dtype in (torch.float32, torch.bfloat16):
        for name, region in (("bsilu", "all"),):  # tables of 1 to 371 thresholds
            for bits in C.BITS:
                levels, thresholds, interval_codes = C.tables(
                    name, None, region, bits, "cpu", dtype
                )
                search = C.search_table(name, None, region, bits, "cpu", dtype)
                y, packed = torch.ops.sugar.relu_forward_codes(
                    x.to(dtype), levels, thresholds, interval_codes, search, bits
                )
                out["codes", dtype, name, region, bits] = packed
                out["codes y", dtype, name, region, bits] = y
                out["decode", dtype, name, region, bits] = torch.ops.sugar.relu_backward_codes(
                    grad.to(dtype), packed, levels, bits
                )
    return out


_AVX2_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[3])
from test_cpu_kernels import _kernel_results
assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()
torch.save(_kernel_results(*torch.load(sys.argv[1])), sys.argv[2])
"""


def test_kernels_identical_with_avx2_dispatch(tmp_path):
    # The exact kernels and the small-table code search are built for AVX2 and, on x86-64 with
    # GCC, again for AVX-512, used where torch itself runs AVX-512 (e.g. the AMD EPYC dev
    # machines). ATEN_CPU_CAPABILITY=avx2 makes torch (and so these kernels) use AVX2: every
    # result must be bitwise the same as this process's (whichever it runs), so the accuracy
    # tests of this process hold for both builds.
    n = 3 * 32768 + 37  # several parallel tasks and a ragged tail
    x = _input(n, torch.float32, seed=5)
    grad = torch.randn(n, generator=torch.Generator().manual_seed(6))
    torch.save((x, grad), tmp_path / "in.pt")
    root, here = str(Path(__file__).parents[1]), str(Path(__file__).parent)
    path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": path}
    script = [sys.executable, "-c", _AVX2_SCRIPT, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")]
    subprocess.run([*script, here], env=env, check=True, timeout=300)
    theirs = torch.load(tmp_path / "out.pt")
    ours = _kernel_results(x, grad)
    assert theirs.keys() == ours.keys()
    for key, expected in theirs.items():
        # Bitwise, except a NaN's sign/payload (the compilers order commutative operands freely).
        floating = expected.is_floating_point()
        nan = expected.isnan() if floating else torch.zeros_like(expected, dtype=torch.bool)
        assert torch.equal(ours[key].isnan() if floating else nan, nan), key
        assert torch.equal(ours[key][~nan].view(torch.uint8), expected[~nan].view(torch.uint8)), key


@pytest.mark.skipif(
    shutil.which("objdump") is None or "AVX512" not in sk.build_info()["cpu_capability"],
    reason="needs objdump and the AVX-512 build",
)
def test_avx512_instructions_only_in_the_avx512_build():
    # The AVX-512 kernels are the same source compiled again; an inline function of a shared
    # header taken from that object for base-build callers would crash CPUs without AVX-512
    # (setup.py links that object last to prevent it). No function outside sugar::avx512 may
    # touch an AVX-512 register (zmm, mask, xmm/ymm 16-31).
    path = next(Path(sk.__file__).parent.glob("_C*.so"))
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True
    ).stdout
    avx512 = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2[0-9]|3[01])\b")
    offenders, users, function = set(), set(), ""
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line
        elif avx512.search(line):
            (users if "avx512" in function else offenders).add(function)
    assert users, "no AVX-512 code found: the check itself is broken"
    assert not offenders, sorted(offenders)[:5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("region", sk.REGIONS)
@pytest.mark.parametrize("name", list(sk.SURROGATES))
def test_codes_at_every_threshold_and_its_neighbours(name, region, dtype):
    # The comparisons decide codes only next to a threshold: every threshold of every table
    # (one threshold, register search, cell grid), 1 and 2 ulps either side, and the special
    # values, shuffled, in a ragged length; forward and in place against code_tables.py, every bits.
    for bits in C.BITS:
        levels, thresholds, interval_codes = C.tables(name, None, region, bits, "cpu", dtype)
        search = C.search_table(name, None, region, bits, "cpu", dtype)
        t = thresholds.to(dtype)
        up, down = torch.nextafter(t, t + 1), torch.nextafter(t, t - 1)
        probes = [t, up, down, torch.nextafter(up, up + 1), torch.nextafter(down, down - 1)]
        x = torch.cat([*probes, _input(7, dtype)])
        x = x.repeat(
            1 + 256 // x.numel()
        )  # small tables too reach the SIMD chunks, not just the tail
        x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(bits))]
        if x.numel() % 32 == 0:
            x = x[1:]
        _check_forward(x, thresholds, interval_codes, search, bits, levels)
