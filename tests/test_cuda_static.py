"""Static checks of the CUDA kernels (no GPU needed): csrc/cuda_kernels.cu is compiled once for
sm_90 with ``nvcc -cubin -Xptxas -v``; every kernel must have no spills and no stack frame, and
the SASS (``cuobjdump -sass``) of the vector variants must use 128-bit global loads and stores
for the tensors and one code-word access of ``bits`` bytes in the code modes.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _cuda_home() -> Path | None:
    """As setup.py's find_cuda_home: $CUDA_HOME, /usr/local/cuda, or the real path of nvcc."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for cand in candidates:
        if cand and (Path(cand) / "bin" / "nvcc").exists():
            return Path(cand).resolve()
    return None


def _cuobjdump(cuda_home: Path) -> str | None:
    """The toolkit's cuobjdump, else the one triton ships."""
    for cand in (cuda_home / "bin" / "cuobjdump", shutil.which("cuobjdump")):
        if cand and Path(cand).exists():
            return str(cand)
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(bundled) if bundled.exists() else None
    except ImportError:
        return None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(ptxas -v output, cubin path, cuda_home): one nvcc run per test session (~30 s)."""
    cuda_home = _cuda_home()
    if cuda_home is None:
        pytest.skip("nvcc not found (CUDA_HOME, /usr/local/cuda, PATH): static CUDA checks skipped")
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    runpy.run_path(str(ROOT / "csrc" / "generate_surrogates.py"))["generate"]()  # _surrogates.h
    out = tmp_path_factory.mktemp("cuda_static") / "kernels.cubin"
    torch_include = Path(torch.__file__).parent / "include"
    cmd = [
        str(cuda_home / "bin" / "nvcc"),
        "-std=c++20",
        "-O3",
        "-arch=sm_90",
        "-cubin",
        "-Xptxas",
        "-v",
        "-DSUGAR_WITH_CUDA",
        *COMMON_NVCC_FLAGS,
        f"-I{ROOT / 'csrc'}",
        f"-I{torch_include}",
        f"-I{torch_include / 'torch' / 'csrc' / 'api' / 'include'}",
        "-o",
        str(out),
        str(ROOT / "csrc" / "cuda_kernels.cu"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr, out, cuda_home


def _demangle(names: list[str]) -> list[str]:
    filt = shutil.which("c++filt")
    if filt is None:
        return names
    done = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True)
    return done.stdout.splitlines()


def _short(name: str) -> str:
    """'relu_forward_codes_kernel<float, 8, true>' from the demangled signature."""
    name = re.sub(r"sugar::|\(anonymous namespace\)::|\(sugar::Surrogate\)", "", name)
    return name.split("(")[0].replace("void ", "").strip()


def test_no_spills_no_stack(compiled):
    log, _, _ = compiled
    entries = re.findall(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, "
                         r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)  # fmt: skip
    kernels = [e for e in entries if "_kernel" in e[0]]
    assert len(kernels) >= 100, f"expected every kernel in the ptxas report, got {len(kernels)}"
    bad = [
        f"{_short(name)}: stack {stack}, spill stores {st}, spill loads {ld}"
        for name, (_, stack, st, ld) in zip(_demangle([k[0] for k in kernels]), kernels)
        if (stack, st, ld) != ("0", "0", "0")
    ]
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def sass(compiled) -> dict[str, Counter]:
    """{kernel: Counter of global/shared memory instructions with their width suffix}."""
    _, cubin, cuda_home = compiled
    tool = _cuobjdump(cuda_home)
    if tool is None:
        pytest.skip("cuobjdump not found (toolkit or triton): SASS checks skipped")
    text = subprocess.run(
        [tool, "-sass", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    parts = re.split(r"\n\s*Function : (\S+)", text)[1:]
    names = _demangle(parts[0::2])
    result = {}
    for name, body in zip(names, parts[1::2]):
        ops = re.findall(r"\b((?:LDG|STG)\.E(?:\.[A-Z0-9]+)*)", body)
        result[_short(name)] = Counter(op.replace(".CONSTANT", "") for op in ops)
    return result


SCALARS = ["float", "double", "c10::Half", "c10::BFloat16"]
WORD = {1: "STG.E.U8", 2: "STG.E.U16", 4: "STG.E", 8: "STG.E.64"}
WORD_LOAD = {1: "LDG.E.U8", 2: "LDG.E.U16", 4: "LDG.E", 8: "LDG.E.64"}


def _packs(scalar: str, elements: int) -> int:
    size = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2}[scalar]
    return elements * size // 16


def test_exact_kernels_use_128_bit_accesses(sass):
    for scalar in SCALARS:
        ops = sass[f"relu_forward_kernel<{scalar}, true>"]
        assert ops["LDG.E.128"] >= 1 and ops["STG.E.128"] >= 1, (scalar, ops)
        for s in range(8):
            ops = sass[f"relu_backward_kernel<{scalar}, true, {s}>"]
            assert ops["LDG.E.128"] >= 2 and ops["STG.E.128"] >= 1, (scalar, s, ops)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_code_kernels_use_128_bit_accesses_and_one_code_word(sass, bits):
    for scalar in SCALARS:
        packs = _packs(scalar, 8)  # a thread's chunk: 8 elements
        fwd = sass[f"relu_forward_codes_kernel<{scalar}, {bits}, true>"]
        assert fwd["LDG.E.128"] >= packs and fwd["STG.E.128"] >= packs, (scalar, bits, fwd)
        assert fwd[WORD[bits]] >= 1, (scalar, bits, fwd)
        bwd = sass[f"relu_backward_codes_kernel<{scalar}, {bits}, true>"]
        assert bwd["LDG.E.128"] >= packs and bwd["STG.E.128"] >= packs, (scalar, bits, bwd)
        assert bwd[WORD_LOAD[bits]] >= 1, (scalar, bits, bwd)
