"""The CUDA kernels' per-chunk functions (csrc/sugar_chunks.h), run on the host.

tests/cpp/chunk_driver.cpp calls the very functions the CUDA kernels call per thread (load /
compute / pack / store of a chunk, the tail, the table fill and search) over every chunk
position, tail length, alignment, bits, in-place or not, and corrupt tables; it is built with
g++ and AddressSanitizer (any access outside an array aborts) and compares bit for bit with a
simple per-element reference. Here, its full-size outputs are also compared with the Python
reference (``encode_reference`` / ``decode_reference``, ``torch.relu``).
"""

from __future__ import annotations

import hashlib
import os
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import sugar_kernels as sk  # noqa: F401
from sugar_kernels import code_tables as codes

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "csrc" / "_surrogates.h"  # from the surrogate catalogue
SOURCES = [
    ROOT / "tests/cpp/chunk_driver.cpp",
    *sorted((ROOT / "csrc").glob("sugar_*.h")),
    GENERATED,
]
N = 4099  # ragged: 512 full chunks of 8 and a tail of 3
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# One configuration per bits, covering both regions and several surrogates.
CONFIGS = {8: ("bsilu", 1.67, "all"), 4: ("gelu", 0.0, "negative"), 2: ("nelu", 0.01, "all")}
CONFIGS[1] = ("elu", 1.0, "negative")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    """Builds the driver once (cached under build/ by source hash): g++ -O0 with ASan, ~10 s."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("no C++ compiler (g++) found: the chunk driver cannot be built")
    runpy.run_path(str(ROOT / "csrc" / "generate_surrogates.py"))["generate"](GENERATED)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16]
    exe = ROOT / "build" / f"chunk_driver-{digest}"
    if not exe.exists():
        exe.parent.mkdir(exist_ok=True)
        tmp = exe.with_suffix(".tmp")
        torch_include = Path(torch.__file__).parent / "include"
        flags = ["-std=c++20", "-O0", "-fsanitize=address", "-ffp-contract=off"]
        includes = [f"-I{ROOT / 'csrc'}", f"-I{torch_include}"]
        cmd = [cxx, *flags, *includes, "-o", str(tmp), str(SOURCES[0])]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
        tmp.rename(exe)
    return exe


def _inputs(dtype: torch.dtype, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: N(0, 3^2), the thresholds themselves and their neighbours (ties), +-0, +-inf, NaN."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, generator=g, dtype=torch.float64) * 3
    t = thresholds.double()
    ties = torch.cat([t, torch.nextafter(t, t + 1), torch.nextafter(t, t - 1)])[: N // 2]
    x[: ties.numel()] = ties[torch.randperm(ties.numel(), generator=g)]
    x[-6:] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30])
    x = x[torch.randperm(N, generator=g)].to(dtype)
    grad_y = (torch.randn(N, generator=g, dtype=torch.float64) * 2).to(dtype)
    return x, grad_y


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_chunk_functions_on_host(driver, tmp_path, dtype_name, bits):
    dtype = DTYPES[dtype_name]
    surrogate, alpha, region = CONFIGS[bits]
    cpu = torch.device("cpu")
    levels, thresholds, interval_codes = codes.tables(surrogate, alpha, region, bits, cpu, dtype)
    search = codes.search_table(surrogate, alpha, region, bits, cpu, dtype)
    x, grad_y = _inputs(dtype, thresholds)
    files = {
        "x": x,
        "grad_y": grad_y,
        "thresholds": thresholds,
        "levels": levels,
        "interval_codes": interval_codes,
        "search": search,
    }
    for name, t in files.items():
        (tmp_path / f"{name}.bin").write_bytes(t.contiguous().view(torch.uint8).numpy().tobytes())
    done = subprocess.run(
        [str(driver), dtype_name, str(bits), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-4000:]

    def read(name, like):
        raw = torch.frombuffer(bytearray((tmp_path / f"{name}.out").read_bytes()), dtype=like)
        return raw.clone()

    packed = read("codes", torch.uint8)
    assert torch.equal(packed, codes.encode_reference(x, thresholds, interval_codes, bits))
    y = read("y", dtype)
    assert torch.equal(y.view(torch.uint8), torch.relu(x).view(torch.uint8))  # NaN, -0.0 too
    grad_x = read("grad_x", dtype)
    expected = codes.decode_reference(grad_y, packed, levels, bits)
    assert torch.equal(grad_x.view(torch.uint8), expected.view(torch.uint8))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available")
@pytest.mark.parametrize("bits", [8, 4, 2, 1])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_code_kernels_on_cuda_match_reference(dtype_name, bits):
    """The same chunk functions in the CUDA kernels: vector and element paths (aligned and
    misaligned views), tails, in place, bit for bit against the Python reference."""
    dtype, dev = DTYPES[dtype_name], torch.device("cuda")
    surrogate, alpha, region = CONFIGS[bits]
    levels, thresholds, interval_codes = codes.tables(surrogate, alpha, region, bits, dev, dtype)
    search = codes.search_table(surrogate, alpha, region, bits, dev, dtype)
    tables = (levels, thresholds, interval_codes, search, bits)
    x_all, g_all = (t.to(dev) for t in _inputs(dtype, thresholds.cpu()))
    ops = torch.ops.sugar
    for offset, n in ((0, N), (1, N - 1), (0, 5), (3, 1000), (8, 8)):
        x, g = x_all[offset : offset + n], g_all[offset : offset + n]
        y, packed = ops.relu_forward_codes(x, *tables)
        assert torch.equal(packed, codes.encode_reference(x, thresholds, interval_codes, bits))
        assert torch.equal(y.view(torch.uint8), torch.relu(x).view(torch.uint8))
        buffer = x_all.clone()
        x_inplace = buffer[offset : offset + n]
        assert torch.equal(ops.relu_forward_codes_(x_inplace, *tables), packed)
        assert torch.equal(x_inplace.view(torch.uint8), torch.relu(x).view(torch.uint8))
        grad_x = ops.relu_backward_codes(g, packed, levels, bits)
        expected = codes.decode_reference(g, packed, levels, bits)
        assert torch.equal(grad_x.view(torch.uint8), expected.view(torch.uint8))
