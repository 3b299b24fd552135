"""Reliability: misuse that must fail loudly, double backward, meta tensors, determinism,
memory stability over many steps, and thread safety. GPU-only checks are marked ``cuda``.

Parametrised over ``sk.available_backends(device)`` and over the exact / code / in-place modes.
"""

from __future__ import annotations

import gc
import os
import threading
import warnings

import pytest
import torch
from helpers import LARGE_SIZE, assert_bitwise_equal, assert_grad_close, oracle_grad

import sugar_kernels as sk
from sugar_kernels import code_tables as C

CPU_BACKENDS = sk.available_backends("cpu")
CUDA_BACKENDS = [b for b in sk.available_backends("cuda") if b != "reference"]
MODES = {
    "exact": {},
    "bits8": {"bits": 8},
    "bits8-inplace": {"bits": 8, "inplace": True},
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _apply(x, backend, mode, surrogate="bsilu", **extra):
    """sugar_relu in ``mode``; in-place modes run on ``x * 1`` (a non-leaf), like a network."""
    kwargs = dict(MODES[mode], **extra)
    if kwargs.get("inplace"):
        x = x * 1
    return sk.sugar_relu(x, surrogate, backend=backend, **kwargs)


# ---------------------------------------------------------------------------------------------
# Saved tensors and the version counter
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_modifying_saved_input_before_backward_raises(backend):
    """Exact mode saves x: changing x in place before backward must raise autograd's error."""
    leaf = torch.randn(6, 5, requires_grad=True)
    h = leaf * 2
    y = sk.sugar_relu(h, "gelu", backend=backend)
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_code_mode_does_not_depend_on_x_after_forward(backend):
    """bits=8 keeps only the codes: x may change after forward, the gradient is that of the
    values x had at forward time."""
    x0 = torch.randn(7, 9, generator=_gen(1)) * 3
    go = torch.randn(7, 9, generator=_gen(2))
    expected_leaf = x0.clone().requires_grad_()
    sk.sugar_relu(expected_leaf * 1, bits=8, backend=backend).backward(go)

    leaf = x0.clone().requires_grad_()
    h = leaf * 1
    y = sk.sugar_relu(h, bits=8, backend=backend)
    h.mul_(-5).add_(3)  # no saved tensor sees this
    y.backward(go)
    assert_bitwise_equal(leaf.grad, expected_leaf.grad, "grad after modifying x")


# ---------------------------------------------------------------------------------------------
# Double backward: a correct answer (checked numerically), never a silent zero
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("region", sk.REGIONS)
@pytest.mark.parametrize("surrogate", list(sk.SURROGATES))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_double_backward_exact_matches_numerical(backend, surrogate, region):
    """d/dx of grad_y * g(x) is grad_y * g'(x) (the surrogate's second derivative); d/d grad_y is
    g(x). gradgradcheck compares both with finite differences of the first-order backward."""
    x = (torch.randn(4, 5, generator=_gen(3), dtype=torch.float64) * 3).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "an autograd kernel was not registered"
        assert torch.autograd.gradgradcheck(
            lambda t: sk.sugar_relu(t, surrogate, region=region, backend=backend),
            (x,),
            eps=1e-6,
            atol=1e-6,
            rtol=1e-5,
        )


def _zero_cases():
    for backend in CPU_BACKENDS:
        for surrogate in sk.SURROGATES:
            yield pytest.param(backend, surrogate, id=f"{backend}-{surrogate}")


def _second_derivative_at_zero(surrogate: str) -> torch.Tensor:
    """g'(0): s''(0) of the stock s(x) for smooth surrogates; for the piecewise ones the
    negative-side (x <= 0) derivative, as in the forward semantics."""
    _, alpha, _ = sk.surrogates.resolve(surrogate, None, "all")
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    if sk.SURROGATES[surrogate].smooth:
        s = sk.surrogates.surrogate_function(surrogate)(t, alpha)
        (d1,) = torch.autograd.grad(s.sum(), t, create_graph=True)
    else:
        d1 = sk.surrogates.surrogate_derivative(surrogate, t, alpha)
    if not d1.requires_grad:
        return torch.zeros_like(t)
    (d2,) = torch.autograd.grad(d1.sum(), t, allow_unused=True, materialize_grads=True)
    return d2


@pytest.mark.parametrize("backend, surrogate", list(_zero_cases()))
def test_double_backward_at_zero_is_the_second_derivative(backend, surrogate):
    """x = 0 exactly (padding, dead units) belongs to the negative side, in backward too."""
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = sk.sugar_relu(x, surrogate, backend=backend)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    expected = _second_derivative_at_zero(surrogate)
    if surrogate in ("elu", "selu"):
        assert (expected != 0).all()  # the left derivative, not the right one (0)
    torch.testing.assert_close(gg, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mode", ["bits8", "bits8-inplace"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_double_backward_code_modes(backend, mode):
    """In a code mode g(x) is piecewise constant: the second derivative in x is 0 and the
    derivative in grad_y is levels[code]. A gradient penalty on grad_x must see both."""
    x0 = torch.randn(5, 6, generator=_gen(4), dtype=torch.float64) * 2
    x = x0.clone().requires_grad_()
    w = torch.randn(5, 6, generator=_gen(5), dtype=torch.float64).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = _apply(x, backend, mode)
        (gx,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        assert gx.requires_grad, "grad_x must be differentiable in grad_y (= w here)"
        (gw,) = torch.autograd.grad(gx.sum(), w)
    # d/dw sum(w * q(x)) = q(x): the quantised factor itself
    levels, thr, icodes = C.tables("bsilu", 1.67, "all", 8, x0.device, x0.dtype)
    q = levels[C.unpack(C.encode_reference(x0, thr, icodes, 8), 8, x0.numel())].view(x0.shape)
    assert_bitwise_equal(gw, q, "d grad_x / d grad_y")
    # and numerically, w.r.t. grad_y (x is kept away from thresholds by the fixed seed)
    assert torch.autograd.gradgradcheck(
        lambda t: _apply(t, backend, mode), (x0.clone().requires_grad_(),), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_second_derivative_backends_agree_float32(backend):
    """float32 double backward (opmath) agrees with the float64 value."""
    x64 = torch.randn(300, generator=_gen(6), dtype=torch.float64) * 3
    results = {}
    for dtype in (torch.float32, torch.float64):
        x = x64.to(dtype).requires_grad_()
        y = sk.sugar_relu(x, "silu", region="negative", backend=backend)
        (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), x)
        assert gg.dtype == dtype
        results[dtype] = gg
    torch.testing.assert_close(
        results[torch.float32].double(), results[torch.float64], rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# Meta tensors: shape-only forward and backward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_meta_tensors_shape_only(backend, mode):
    x = torch.empty(3, 8, 5, device="meta").transpose(0, 2).requires_grad_()
    y = _apply(x, backend, mode, surrogate="mish")
    expected = torch.relu(x)
    assert y.device.type == "meta"
    assert (y.shape, y.dtype) == (expected.shape, expected.dtype)
    if not MODES[mode].get("inplace"):
        assert y.stride() == expected.stride()
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.device.type == "meta" and gx.shape == x.shape and gx.dtype == x.dtype
    # meta calls do not disturb real ones (the code tables are cached per device)
    real = torch.randn(11, generator=_gen(7))
    y_real = _apply(real, backend, mode, surrogate="mish")
    assert type(y_real) is torch.Tensor and y_real.device.type == "cpu"
    assert_bitwise_equal(y_real, torch.relu(real), "real tensor after meta call")


def test_compiled_backend_on_meta_tensor_raises_clearly():
    """Asking for a device's compiled kernel on another device is an error, never a fallback."""
    if not sk.build_info()["cpu_compiled"]:
        pytest.skip("C++ CPU kernels not built")
    with pytest.raises(ValueError, match="backend 'cpu' cannot run a tensor on device 'meta'"):
        sk.sugar_relu(torch.empty(3, device="meta"), backend="cpu")


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------
def _forward_backward(x, go, backend, mode, surrogate="gelu"):
    leaf = x.detach().clone().requires_grad_()
    y = _apply(leaf, backend, mode, surrogate)
    y.backward(go)
    return y.detach().clone(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bitwise_deterministic_across_runs_and_thread_counts(backend, mode, dtype):
    """Two runs, and a run on one thread, give the same bits (large enough to be split over
    threads by the CPU kernels)."""
    n = LARGE_SIZE
    if backend == "triton":  # on CPU only under the (slow, bfloat16-less) interpreter
        if dtype == torch.bfloat16:
            pytest.skip("the Triton interpreter has no bfloat16")
        n = 65_537
    x = (torch.randn(n, generator=_gen(8)) * 4).to(dtype)
    go = torch.randn(n, generator=_gen(9)).to(dtype)
    first = _forward_backward(x, go, backend, mode)
    second = _forward_backward(x, go, backend, mode)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _forward_backward(x, go, backend, mode)
    finally:
        torch.set_num_threads(threads)
    for name, other in (("second run", second), ("one thread", single)):
        assert_bitwise_equal(other[0], first[0], f"forward, {name}")
        assert_bitwise_equal(other[1], first[1], f"grad, {name}")


# ---------------------------------------------------------------------------------------------
# Memory: no growth over 10,000 forward/backward steps
# ---------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


LEAK_STEPS = 10_000
LEAK_SLACK = 4 * 2**20  # leaking one 4 KiB activation per step would add ~40 MiB


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("mode", ["exact", "bits8-inplace"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_memory_growth_over_10000_steps(backend, mode):
    w = torch.randn(64, 64, generator=_gen(10), requires_grad=True)
    x = torch.randn(16, 64, generator=_gen(11))

    def step():
        y = _apply(x @ w, backend, mode)  # 16 x 64 float32 = 4 KiB per activation
        y.sum().backward()
        w.grad = None

    for _ in range(500):  # warm up allocator, caches, code tables
        step()
    gc.collect()
    before = _rss_bytes()
    for _ in range(LEAK_STEPS):
        step()
    gc.collect()
    growth = _rss_bytes() - before
    assert growth <= LEAK_SLACK, f"RSS grew by {growth / 2**20:.1f} MiB over {LEAK_STEPS} steps"


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------
def _thread_jobs():
    jobs = []
    for i, backend in enumerate(CPU_BACKENDS):
        for j, (mode, surrogate, region, dtype) in enumerate(
            [
                ("exact", "bsilu", "all", torch.float32),
                ("bits8", "nelu", "negative", torch.float64),
                ("bits8-inplace", "gelu", "all", torch.bfloat16),
                ("exact", "selu", "negative", torch.float16),
            ]
        ):
            seed = 100 + 10 * i + j
            x = (torch.randn(3001, generator=_gen(seed)) * 3).to(dtype)
            go = torch.randn(3001, generator=_gen(seed + 1)).to(dtype)
            jobs.append((backend, mode, surrogate, region, x, go))
    return jobs


def _run_job(job):
    backend, mode, surrogate, region, x, go = job
    leaf = x.detach().clone().requires_grad_()
    y = _apply(leaf, backend, mode, surrogate, region=region)
    y.backward(go)
    return y.detach().clone(), leaf.grad


def test_four_threads_concurrently_give_correct_results(monkeypatch):
    """4 threads run interleaved jobs (every backend, exact/code/in-place, four dtypes), starting
    with an empty code-table cache so that they also race to fill it."""
    jobs = _thread_jobs()
    expected = [_run_job(job) for job in jobs]
    for (backend, mode, surrogate, region, x, go), (y, g) in zip(jobs, expected, strict=True):
        assert_bitwise_equal(y, torch.where(x.isnan(), x, torch.relu(x)), "sequential forward")
        if mode == "exact":
            ref = oracle_grad(go, x, surrogate, None, region)
            assert_grad_close(g, ref, go, x.dtype, f"{backend} {surrogate}")

    monkeypatch.setattr(C, "_TABLES", {})
    n_threads, rounds = 4, 6
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []
    results: dict[tuple[int, int, int], tuple] = {}

    def worker(tid):
        try:
            barrier.wait()
            for r in range(rounds):
                for k in range(len(jobs)):
                    job_index = (k + tid) % len(jobs)  # every thread in a different order
                    results[(tid, r, job_index)] = _run_job(jobs[job_index])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == n_threads * rounds * len(jobs)
    for (tid, r, k), (y, g) in results.items():
        assert_bitwise_equal(y, expected[k][0], f"thread {tid} round {r} job {k} forward")
        assert_bitwise_equal(g, expected[k][1], f"thread {tid} round {r} job {k} grad")


# ---------------------------------------------------------------------------------------------
# GPU only
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("bits", [8, 1])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_code_mode_more_than_2_31_elements_float16(backend, bits):
    """Code modes past 2^31 elements, in place (exact mode is test_core.py::TestCUDA::
    test_64bit_indexing): the tail's codes are written and read at the right byte and bit."""
    n = 2**31 + 7
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with >= 40 GiB")
    period = 2**20
    block = (torch.randn(period, generator=_gen(12)) * 3).to(torch.float16).cuda()
    base = torch.empty(n, dtype=torch.float16, device="cuda")
    full = n // period * period
    base[:full].view(-1, period).copy_(block.expand(n // period, period))
    base[full:] = block[: n - full]
    base.requires_grad_()
    h = base.clone()  # a non-leaf, as in a network
    y = sk.sugar_relu(h, "gelu", bits=bits, inplace=True, backend=backend)
    assert y.data_ptr() == h.data_ptr()
    go = torch.full((), 0.5, dtype=torch.float16, device="cuda").expand(n)
    (grad,) = torch.autograd.grad(y, base, go)
    levels, thr, icodes = C.tables("gelu", 0.0, "all", bits, base.device, torch.float16)
    for sl in (slice(0, 4096), slice(2**31 - 2048, n)):
        xs = block[torch.arange(sl.start, sl.stop, device="cuda") % period]
        assert_bitwise_equal(y.detach()[sl], torch.relu(xs), f"forward {sl}")
        code = C.unpack(C.encode_reference(xs, thr, icodes, bits), bits, xs.numel())
        expected = (0.5 * levels[code]).to(torch.float16)
        assert_bitwise_equal(grad[sl], expected, f"grad {sl}")
    del base, h, y, grad
    torch.cuda.empty_cache()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("surrogate", ["bsilu", "elu", "mish", "leaky_relu"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_double_backward_cuda_matches_numerical(backend, surrogate):
    x = (torch.randn(4, 5, generator=_gen(13), dtype=torch.float64) * 3).cuda().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda t: sk.sugar_relu(t, surrogate, region="negative", backend=backend),
        (x,),
        eps=1e-6,
        atol=1e-6,
        rtol=1e-5,
    )


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_no_allocated_memory_growth_and_deterministic(backend, mode):
    w = torch.randn(256, 256, device="cuda", requires_grad=True)
    x = torch.randn(64, 256, device="cuda")

    def step():
        y = _apply(x @ w, backend, mode)
        y.square().sum().backward()
        g = w.grad
        w.grad = None
        return g

    first = step()
    for _ in range(100):
        step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(LEAK_STEPS):
        step()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before
    assert_bitwise_equal(step(), first, "CUDA determinism")


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_tensors_on_a_gpu_that_is_not_the_current_one(backend, mode):
    """Kernels run on their tensors' device, not the current one (cuda:0 current, tensors on
    cuda:1), with the same results as on the CPU reference."""
    x = torch.randn(64, 256, generator=_gen(31), dtype=torch.float64)
    go = torch.randn(x.shape, generator=_gen(32), dtype=torch.float64)
    want_x = x.clone().requires_grad_()
    _apply(want_x * 1, "reference", mode).backward(go)
    with torch.cuda.device(0):
        got_x = x.to("cuda:1").requires_grad_()
        y = _apply(got_x * 1, backend, mode)
        y.backward(go.to("cuda:1"))
        assert y.device == got_x.grad.device == torch.device("cuda:1")
        assert torch.equal(y.cpu(), torch.relu(x))
    assert_grad_close(got_x.grad.cpu(), want_x.grad, go, torch.float64, f"{backend} on cuda:1")
