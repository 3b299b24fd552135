"""Every Triton kernel of the project compiled for real GPUs (sm_80, sm_90) on this GPU-less
machine, with the pinned triton: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch,
32))``, the way ``JITFunction.run`` compiles at launch time.

The kernels, arguments, compile-time flags and autotune configs come from the launchers
themselves: each variant is a ``<kernel>_launch(...)`` Launch built from meta tensors (no memory;
their data_ptr gives the alignment Triton specialises on) plus one of ``launch_configs(launch)``,
and Triton's own binder for the target turns them into the signature, constexprs and
``tt.divisibility`` attributes it would compile. Covered, per architecture: every kernel, dtype,
surrogate, region, bits value, in-place, the small block and every autotune config (sampled: all
math variants at the small block and at the largest config; the middle configs in rotation), and
on sm_90 Triton's run-time specialisations (misaligned views with ragged sizes, one element,
more than 2^31 elements, a table of 16 thresholds).

Checked on the compiled code: 0 failures; ptxas (``-v``, the log of Triton's own ptxas run) reports
registers, 0 spills and 0 stack for every variant; with 16-byte-aligned pointers the exact kernels'
global loads and stores are all 128-bit (``v4.b32`` for 32- and 16-bit types, ``v2.b64`` for
float64), also for sizes that are not a multiple of 16 (all but the tail block), and misaligned
views fall back to scalar accesses (the code kernels' widths are printed); the compiled gelu calls
libdevice erfc (the interpreter computes 1 - erf instead) and the compiled launchers use the full
autotune config lists (the interpreter gets one config). Compilation runs in a pool of two
processes with a private Triton cache.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import multiprocessing
import os
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip(
        "TRITON_INTERPRET=1 makes the kernels interpreted functions, which cannot be compiled",
        allow_module_level=True,
    )

from sugar_kernels import triton_kernels  # noqa: E402

if triton_kernels.IMPORT_ERROR is not None:
    pytest.skip(triton_kernels.IMPORT_ERROR, allow_module_level=True)

import triton  # noqa: E402

try:  # the compiler entry points of triton 3.8 (the pinned version)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
except ImportError as exc:  # pragma: no cover - another triton
    pytest.skip(
        f"triton {triton.__version__}: compiler API differs ({exc})", allow_module_level=True
    )

from sugar_kernels.triton_kernels import code_modes as C  # noqa: E402
from sugar_kernels.triton_kernels import exact as S  # noqa: E402

ARCHS = (80, 90)
KERNELS = ("relu_forward", "relu_backward", "relu_forward_codes", "relu_backward_codes")
SMALL = -1  # Variant.config for the small-block path; >= 0: index into the autotuner's configs
WORKERS = 2


@dataclass(frozen=True)
class Variant:
    kernel: str
    arch: int
    dtype: torch.dtype
    surrogate: str | None = None  # relu_backward
    region: str | None = None  # relu_backward
    bits: int | None = None  # code kernels
    inplace: bool = False  # relu_forward_codes
    shape: str = "aligned"  # aligned | ragged | misaligned | one | huge | table16
    config: int = SMALL


# ---- the variants: built from the launchers' own constants --------------------------------------
def _n_configs(kernel: str, dtype: torch.dtype) -> int:
    """How many autotune configs the kernel's launcher has for dtype."""
    s, r, b, inplace = _math_variants(kernel)[0]
    return len(S.launch_configs(launch_of(Variant(kernel, 90, dtype, s, r, b, inplace, config=0))))


def _math_variants(kernel: str, regions: bool = True):
    """(surrogate, region, bits, inplace) of every math variant the launcher can request; with
    ``regions=False`` the backward's regions in rotation over the surrogates."""
    if kernel == "relu_forward":
        return [(None, None, None, False)]
    if kernel == "relu_backward":
        if not regions:
            return [(s, S.REGIONS[i % 2], None, False) for i, s in enumerate(S.SURROGATE_IDS)]
        return [(s, r, None, False) for s in S.SURROGATE_IDS for r in S.REGIONS]
    if kernel == "relu_forward_codes":
        return [(None, None, b, inplace) for b in C.BITS for inplace in (False, True)]
    return [(None, None, b, False) for b in C.BITS]


def plan() -> list[Variant]:
    """Per arch, kernel and dtype: every math variant at the small block (sm_80: the backward's
    regions in rotation) and on sm_90 at the largest autotune config (regions in rotation); the
    other configs with the math variants in rotation; on sm_90 the run-time specialisations
    (ragged and misaligned sizes for every dtype; one element, > 2^31 elements and a table of
    16 thresholds for one dtype each)."""
    out = []
    for (k, kernel), (d, dtype) in itertools.product(enumerate(KERNELS), enumerate(S.FLOAT_DTYPES)):
        last = _n_configs(kernel, dtype) - 1
        maths = _math_variants(kernel)
        for arch in ARCHS:
            sets = [(SMALL, _math_variants(kernel, regions=arch == 90))]
            if arch == 90:
                sets.append((last, _math_variants(kernel, regions=False)))
            for config, variants in sets:
                out += [Variant(kernel, arch, dtype, *m, config=config) for m in variants]
            others = range(last) if arch == 90 else range(last + 1)
            for config in others:
                m = maths[(config * 5 + d * 3 + arch) % len(maths)]
                out.append(Variant(kernel, arch, dtype, *m, config=config))
        specials = [("ragged", SMALL), ("misaligned", SMALL)]
        for i, shape in enumerate(("one", "huge", "table16")):
            if (k + i) % len(S.FLOAT_DTYPES) == d and (shape != "table16" or k == 2):
                specials.append((shape, 0 if shape == "huge" else SMALL))
        for i, (shape, config) in enumerate(specials):
            m = maths[(i * 7 + d * 3 + k) % len(maths)]
            out.append(Variant(kernel, 90, dtype, *m, shape=shape, config=config))
    return out


def _meta(dtype: torch.dtype, n: int, misaligned: bool = False) -> torch.Tensor:
    """n elements of meta storage at data_ptr 0 (16-byte aligned) or one element further (a view
    such as x[1:], which the launchers pass on as it is: it is dense)."""
    base = torch.empty(n + 1, dtype=dtype, device="meta")
    return base[1:] if misaligned else base[:n]


def _n_elements(v: Variant) -> int:
    n = {"one": 1, "huge": 2**31 + 16}.get(v.shape)
    if n is None:
        n = S.AUTOTUNE_MIN_ELEMENTS if v.config >= 0 else 4096
        n += 3 if v.shape in ("ragged", "misaligned") else 0
    return n


def launch_of(v: Variant) -> S.Launch:
    """The Launch the op would make for this variant (through the launchers' own functions)."""
    n = _n_elements(v)
    misaligned = v.shape == "misaligned"

    def t():
        return _meta(v.dtype, n, misaligned)

    if v.kernel == "relu_forward":
        launch = S.relu_forward_launch(t(), t())
    elif v.kernel == "relu_backward":
        surrogate_id, negative_only = S._parse_params(v.surrogate, 1.0, v.region)
        launch = S.relu_backward_launch(t(), t(), t(), surrogate_id, negative_only, 1.0)
    else:
        opmath = C._opmath(v.dtype)
        codes = _meta(torch.uint8, C.packed_size(n, v.bits))
        levels = _meta(opmath, 1 << v.bits)
        n_thresholds = 16 if v.shape == "table16" else (1 << v.bits) - 1
        thresholds = _meta(opmath, n_thresholds)
        interval_codes = _meta(torch.uint8, n_thresholds + 1)
        search = _meta(torch.int32, C.SEARCH_BUCKETS + 1)
        x = t()
        C._check_code_args(x, levels, thresholds, interval_codes, search, v.bits, "test")
        if v.kernel == "relu_forward_codes":
            y = x if v.inplace else t()
            launch = C.relu_forward_codes_launch(
                x, y, codes, thresholds, interval_codes, search, v.bits
            )
        else:
            launch = C.relu_backward_codes_launch(x, codes, levels, t(), v.bits)
    assert launch.autotune == (v.config >= 0), (v, n)
    return launch


@dataclass(frozen=True)
class Job:
    """What triton.compile gets: the kernel (by module and name) and Triton's own binding."""

    module: str
    name: str
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    weight: int  # BLOCK_SIZE x element bytes: the larger, the longer it compiles

    def key(self) -> str:
        return repr((self.name, self.arch, self.signature, self.constexprs, self.attrs,
                     sorted(self.options.items())))  # fmt: skip


_BACKENDS: dict[int, object] = {}
_BINDERS: dict[tuple[str, int], object] = {}


def job_of(v: Variant) -> Job:
    """Bind the launch's arguments as JITFunction.run does for a GPU of ``v.arch``."""
    launch = launch_of(v)
    kernel = launch.kernel
    assert isinstance(kernel, JITFunction), type(kernel)
    backend = _BACKENDS.get(v.arch) or _BACKENDS.setdefault(
        v.arch, make_backend(GPUTarget("cuda", v.arch, 32))
    )
    binder = _BINDERS.get((kernel.__name__, v.arch))
    if binder is None:
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        _BINDERS[(kernel.__name__, v.arch)] = binder
    kwargs = {**launch.flags, **S.launch_configs(launch)[max(v.config, 0)]}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    weight = kwargs["BLOCK_SIZE"] * torch.empty((), dtype=v.dtype).element_size()
    return Job(kernel.fn.__module__, kernel.__name__, v.arch, signature, constexprs, attrs,
               dict(options.__dict__), weight)  # fmt: skip


# ---- compilation (in worker processes) ----------------------------------------------------------
def _init_worker(cache_dir: str) -> None:
    triton.knobs.cache.dir = cache_dir  # private cache: every job compiles, ptxas logs
    triton.knobs.nvidia.dump_ptxas_log = True


_GLOBAL_OP = re.compile(r"\b(?:ld|st)\.global[\w.:]*")


def _compile(job: Job) -> dict:
    """Compile one job; ptxas numbers, global access opcodes, libdevice calls (or the error)."""
    kernel = getattr(importlib.import_module(job.module), job.name)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(kernel, job.signature, job.constexprs, job.attrs),
                target=GPUTarget("cuda", job.arch, 32),
                options=job.options,
            )
    except Exception as exc:  # reported by the test, with the variant
        return {"error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
    text = log.getvalue()

    def number(pattern: str) -> int:
        found = re.search(pattern, text)
        return int(found.group(1)) if found else -1

    return {
        "seconds": time.perf_counter() - start,
        "regs": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "stack": number(r"(\d+) bytes stack frame"),
        "global_ops": Counter(_GLOBAL_OP.findall(compiled.asm["ptx"])),
        "libdevice": sorted(set(re.findall(r'"(__nv_\w+)"', compiled.asm["ttir"]))),
    }


@dataclass(frozen=True)
class Compiled:
    variants: list
    jobs: dict  # Variant -> Job
    results: dict  # Job.key() -> result dict
    seconds: float

    def result(self, v: Variant) -> dict:
        return self.results[self.jobs[v].key()]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Compiled:
    start = time.perf_counter()
    variants = plan()
    jobs = {v: job_of(v) for v in variants}
    unique = {job.key(): job for job in jobs.values()}
    cache_dir = str(tmp_path_factory.mktemp("triton_cache"))
    # The longest jobs first (large blocks, float64), so that the two workers finish together.
    order = sorted(unique, key=lambda k: -unique[k].weight)
    with ProcessPoolExecutor(
        WORKERS,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(cache_dir,),
    ) as pool:
        results = dict(zip(order, pool.map(_compile, [unique[k] for k in order], chunksize=4)))
    return Compiled(variants, jobs, results, time.perf_counter() - start)


# ---- the tests ----------------------------------------------------------------------------------
def test_plan_covers_every_variant():
    """Per arch and kernel: every dtype, surrogate, region, bits, in-place value, the small
    block and every autotune config of the dtype's autotuner; specialisations on sm_90."""
    variants = plan()
    seen = defaultdict(set)
    for v in variants:
        for axis in ("dtype", "surrogate", "region", "bits", "inplace", "shape"):
            seen[v.arch, v.kernel, axis].add(getattr(v, axis))
        seen[v.arch, v.kernel, v.dtype, "config"].add(v.config)
    for arch, kernel in itertools.product(ARCHS, KERNELS):
        assert seen[arch, kernel, "dtype"] == set(S.FLOAT_DTYPES)
        if kernel == "relu_backward":
            assert seen[arch, kernel, "surrogate"] == set(S.SURROGATE_IDS)
            assert seen[arch, kernel, "region"] == set(S.REGIONS)
        if kernel.endswith("_codes"):
            assert seen[arch, kernel, "bits"] == set(C.BITS)
        if kernel == "relu_forward_codes":
            assert seen[arch, kernel, "inplace"] == {False, True}
        for dtype in S.FLOAT_DTYPES:
            configs = {SMALL, *range(_n_configs(kernel, dtype))}
            assert seen[arch, kernel, dtype, "config"] == configs, (arch, kernel, dtype)
        if arch == 90:
            assert {"ragged", "misaligned", "one", "huge"} <= seen[arch, kernel, "shape"]
    assert "table16" in seen[90, "relu_forward_codes", "shape"]


def test_launchers_use_the_compiled_configs():
    """The compiled (not interpreted) launchers: jit kernels, the full autotune config lists
    (float64: its own, 8 elements per thread), the small block below AUTOTUNE_MIN_ELEMENTS."""
    assert not S.INTERPRET
    x32 = _meta(torch.float32, S.AUTOTUNE_MIN_ELEMENTS)
    x64 = _meta(torch.float64, S.AUTOTUNE_MIN_ELEMENTS)
    assert S.relu_forward_launch(x32, x32).autotuned.configs == S.AUTOTUNE_CONFIGS
    assert S.relu_forward_launch(x64, x64).autotuned.configs == S.AUTOTUNE_CONFIGS_64
    assert len(S.AUTOTUNE_CONFIGS) > 1 and len(S.AUTOTUNE_CONFIGS_64) > 1
    small = S.relu_forward_launch(x32[:100], x32[:100])
    assert S.launch_configs(small) == [{"BLOCK_SIZE": S.SMALL_BLOCK_SIZE}]


def test_inplace_forward_codes_is_the_same_binary():
    """Triton does not specialise on aliasing: y = x compiles to the functional kernel."""
    for v in plan():
        if v.kernel == "relu_forward_codes" and v.inplace:
            assert job_of(v).key() == job_of(replace(v, inplace=False)).key()


def test_every_variant_compiles(compiled):
    failures = [(v, compiled.result(v)["error"]) for v in compiled.variants
                if "error" in compiled.result(v)]  # fmt: skip
    assert not failures, f"{len(failures)} variants failed to compile, first: {failures[0]}"
    # The summary (pytest -rA / -s): per kernel and arch, variants, binaries, registers.
    rows = defaultdict(list)
    for v in compiled.variants:
        rows[v.kernel, v.arch].append(compiled.result(v)["regs"])
    cpu = sum(r["seconds"] for r in compiled.results.values())
    print(f"\n{len(compiled.variants)} variants, {len(compiled.results)} binaries, "
          f"{compiled.seconds:.0f} s ({WORKERS} workers; {cpu:.0f} s compiling)")  # fmt: skip
    for (kernel, arch), regs in sorted(rows.items()):
        print(
            f"{kernel:22s} sm_{arch}: {len(regs):3d} variants, registers {min(regs)}..{max(regs)}"
        )


def test_no_spills_and_no_stack(compiled):
    bad = []
    for v in compiled.variants:
        r = compiled.result(v)
        assert r["regs"] > 0, f"no register count in the ptxas log for {v}"
        if r["spill_stores"] or r["spill_loads"] or r["stack"]:
            bad.append((v, r["regs"], r["spill_stores"], r["spill_loads"], r["stack"]))
    assert not bad, f"{len(bad)} variants spill or use a stack frame, e.g. {bad[:3]}"


def _width(op: str) -> int:
    """Bytes per thread of a global access opcode, e.g. ld.global.v4.b32 -> 16."""
    vec = re.search(r"\.v(\d)\.", op)
    return (int(vec.group(1)) if vec else 1) * int(re.search(r"\.[bfsu](\d+)$", op).group(1)) // 8


def test_exact_kernels_use_128_bit_accesses(compiled):
    """16-byte-aligned pointers: every global load and store of relu_forward and relu_backward
    is 128-bit (v4.b32 for float32 and, 8 elements at a time, float16/bfloat16; v2.b64 for
    float64); with a size that is not a multiple of 16 the full blocks still are (only the tail
    is scalar); misaligned views get scalar accesses only (so this check can fail)."""
    checked = Counter()
    for v in compiled.variants:
        if v.kernel not in ("relu_forward", "relu_backward"):
            continue
        ops = compiled.result(v)["global_ops"]
        want = {"ld.global.v2.b64", "st.global.v2.b64"}
        if v.dtype != torch.float64:
            want = {"ld.global.v4.b32", "st.global.v4.b32"}
        if v.shape == "aligned":
            assert set(ops) == want, (v, ops)
        elif v.shape == "ragged":
            assert want <= set(ops) and min(map(_width, ops)) < 16, (v, ops)
        elif v.shape == "misaligned":
            assert max(map(_width, ops)) < 16, (v, ops)
        checked[v.shape] += 1
    assert checked["aligned"] and checked["ragged"] and checked["misaligned"], checked


def test_code_kernel_access_widths(compiled):
    """The code kernels' widest global load and store per dtype and bits (aligned, sm_90, small
    block), printed for the record: their [bytes, 8 // bits] tile gives each thread 8 // bits
    contiguous elements (whole rows of them when bits = 8), which caps element accesses at
    (8 // bits) x element size bytes; the widths here also include code bytes and table reads."""
    rows = []
    for v in compiled.variants:
        if v.kernel.endswith("_codes") and v.shape == "aligned" and v.arch == 90:
            if v.config == SMALL and not v.inplace:
                ops = compiled.result(v)["global_ops"]
                ld = max(_width(op) for op in ops if op.startswith("ld"))
                st = max(_width(op) for op in ops if op.startswith("st"))
                rows.append(f"{v.kernel:20s} {str(v.dtype)[6:]:9s} bits={v.bits}: ld {ld} st {st}")
    assert len(rows) == 2 * len(S.FLOAT_DTYPES) * len(C.BITS)
    print("\n" + "\n".join(sorted(rows)))


def test_compiled_gelu_uses_libdevice_erfc(compiled):
    """The compiled branch of _erfc (the interpreter's is 1 - erf): libdevice erfc[f]."""
    gelu = [v for v in compiled.variants if v.surrogate == "gelu"]
    assert gelu
    for v in gelu:
        want = "__nv_erfc" if v.dtype == torch.float64 else "__nv_erfcf"
        assert want in compiled.result(v)["libdevice"], (v, compiled.result(v)["libdevice"])
    others = [v for v in compiled.variants if v.kernel == "relu_backward" and v.surrogate != "gelu"]
    assert not any("erfc" in s for v in others for s in compiled.result(v)["libdevice"])
