"""SUGAR in the PyTorch ecosystem: torch.compile, torch.export, autocast, activation
checkpointing, save_on_cpu, DDP, strip/ONNX deployment and nn.Module behaviour.

Every test is parametrised over ``sk.available_backends(device)`` and over the three modes a
user picks between (exact, ``bits=8``, ``bits=8`` in place), so a new backend is covered as soon
as it is listed. GPU-only tests are marked ``cuda`` and skip without a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_bitwise_equal, assert_grad_close, oracle_grad, sample_inputs
from torch import nn

import sugar_kernels as sk
from sugar_kernels import code_tables as C

CPU_BACKENDS = sk.available_backends("cpu")
CUDA_BACKENDS = [b for b in sk.available_backends("cuda") if b != "reference"]
COMPILED_CPU = sk.build_info()["cpu_compiled"]
MODES = {
    "exact": {},
    "bits8": {"bits": 8},
    "bits8-inplace": {"bits": 8, "inplace": True},
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(backend="auto", dtype=torch.float32, seed=0, **kwargs) -> nn.Sequential:
    """Linear-SUGAR-Linear-SUGAR-Linear with fixed weights (private generator)."""
    g = _gen(seed)
    net = nn.Sequential(
        nn.Linear(12, 24),
        sk.SugarReLU("bsilu", backend=backend, **kwargs),
        nn.Linear(24, 16),
        sk.SugarReLU("mish", region="negative", backend=backend, **kwargs),
        nn.Linear(16, 3),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.to(dtype)


def _loss_and_grads(net: nn.Module, x: torch.Tensor):
    net.zero_grad(set_to_none=True)
    xl = x.detach().clone().requires_grad_()
    loss = net(xl).square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in net.parameters()] + [xl.grad.clone()]


def _skip_uncompilable(backend: str, device: str = "cpu") -> None:
    if backend == "triton" and device == "cpu":
        pytest.skip(
            "torch.compile of a triton_op fails under TRITON_INTERPRET: it reads data "
            "pointers of fake tensors"
        )


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_fullgraph_no_graph_breaks(backend, mode):
    """One graph, zero breaks (torch._dynamo.explain); the compiled step equals eager bitwise."""
    _skip_uncompilable(backend)
    kwargs = MODES[mode]

    def step(x, w):
        h = sk.sugar_relu(x @ w, "gelu", region="negative", backend=backend, **kwargs)
        return (h * h).sum()

    g = _gen(1)
    x = torch.randn(16, 12, generator=g) * 2
    w = torch.randn(12, 20, generator=g)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(step)(x, w.clone().requires_grad_())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    torch._dynamo.reset()
    wl = w.clone().requires_grad_()
    eager_loss = step(x, wl)
    (eager_grad,) = torch.autograd.grad(eager_loss, wl)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x, wl)
    (grad,) = torch.autograd.grad(loss, wl)
    torch._dynamo.reset()
    # aot_eager runs the same kernels in the same order: no reason for any rounding difference
    assert_bitwise_equal(loss.detach(), eager_loss.detach(), "compiled loss")
    assert_bitwise_equal(grad, eager_grad, "compiled grad")


@pytest.mark.skipif(not COMPILED_CPU, reason="C++ CPU kernels not built")
@pytest.mark.parametrize(
    "surrogate, mode, style",
    [
        ("gelu", "exact", "functional"),
        ("gelu", "bits8-inplace", "functional"),
        ("gelu", "bits8", "module"),
        ("bsilu", "exact", "functional"),
        ("bsilu", "bits8", "functional"),
        ("bsilu", "exact", "module"),
        ("bsilu", "bits8-inplace", "module"),
    ],
)
def test_compile_dynamic_true_fullgraph_compiles_once(surrogate, mode, style):
    """torch.compile(dynamic=True): one graph for every batch size (codes have a symbolic size
    ceil(numel * bits / 8)), default alphas included; results equal eager bitwise."""
    from torch._dynamo.testing import CompileCounterWithBackend

    kwargs = MODES[mode]
    act = sk.SugarReLU(surrogate, **kwargs)

    def f(t):
        h = t * 1
        y = act(h) if style == "module" else sk.sugar_relu(h, surrogate, **kwargs)
        return y.sum()

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    try:
        for n in (7, 33, 130):
            x = torch.randn(n, generator=_gen(n), requires_grad=True)
            compiled(x).backward()
            expected = x.detach().clone().requires_grad_()
            f(expected).backward()
            assert_bitwise_equal(x.grad, expected.grad, f"n={n}")
            if n == 7:
                first = counter.frame_count
        assert counter.frame_count == first, "recompiled for a new size"
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_export_module(backend, mode):
    _skip_uncompilable(backend)
    net = _mlp(backend, **MODES[mode]).eval()
    x = torch.randn(5, 12, generator=_gen(2)) * 2
    expected = net(x)
    ep = torch.export.export(net, (x,))
    if backend != "reference":
        assert "sugar." in str(ep.graph), "the custom op must stay in the exported graph"
    assert_bitwise_equal(ep.module()(x), expected, "exported module")
    # the program serialises and loads back (the custom ops resolve by name)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    assert_bitwise_equal(loaded.module()(x), expected, "saved/loaded exported module")


_COLD_EXPORT_SCRIPT = textwrap.dedent(
    """
    import torch, sugar_kernels as sk
    # nothing computed yet: the code tables are built during (non-strict) export tracing
    ep = torch.export.export(sk.SugarReLU(bits=8), (torch.randn(40, dtype=torch.float64),))
    # building the tables must leave nothing in the program (no grad-mode regions, one op)
    code = ep.graph_module.code
    assert "wrap_with_set_grad_enabled" not in code and not list(ep.graph_module.children()), code
    assert code.count("sugar.relu_forward_codes.default") == 1, code
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    y = sk.sugar_relu(x, bits=8)
    assert type(y) is torch.Tensor, f"eager output after export is a {type(y).__name__}"
    y.sum().backward()
    assert type(x.grad) is torch.Tensor, f"eager grad after export is a {type(x.grad).__name__}"
    assert torch.equal(y, torch.relu(x.detach()))
    assert torch.equal(ep.module()(x.detach()), y)
    print("OK")
    """
)


def test_torch_export_code_mode_with_cold_table_cache():
    """A fresh process: export first, then eager use must still produce real tensors."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    proc = subprocess.run(
        [sys.executable, "-c", _COLD_EXPORT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("inplace", [False, True])
def test_inference_mode_first_then_training(backend, inplace):
    """A code configuration first used under torch.inference_mode (a validation pass or a
    framework's sanity check before training) caches ordinary tables: training afterwards works
    and gets grad_y * levels[code] (an inference tensor cannot be saved for backward)."""
    # a configuration no other test uses, so its tables are first built in inference mode here
    args = dict(surrogate="nelu", alpha=0.0371 + inplace / 100, bits=2, backend=backend)
    model = nn.Sequential(nn.Linear(8, 16), sk.SugarReLU(inplace=inplace, **args))
    x = torch.randn(4, 8, generator=_gen(21))
    with torch.inference_mode():
        want = torch.relu(model[0](x))
        assert torch.equal(model(x), want)
    h = model[0](x).detach().requires_grad_()
    go = torch.randn(h.shape, generator=_gen(22))
    (grad,) = torch.autograd.grad(model[1](h * 1), h, go)
    levels, thr, icodes = C.tables("nelu", args["alpha"], "all", 2, x.device, x.dtype)
    idx = C.unpack(C.encode_reference(h.detach(), thr, icodes, 2), 2, h.numel()).view(h.shape)
    assert_bitwise_equal(grad, go * levels[idx], "grad after a first call in inference mode")


def test_code_tables_ignore_the_default_device():
    """A configuration first used under ``with torch.device(...)`` / ``set_default_device``
    (meta here: any device other than the CPU) builds its tables on x's device; the quantizer's
    intermediates stay on the CPU (this raised "can't convert meta device type tensor to numpy")."""
    x = torch.randn(4, 64, generator=_gen(23), requires_grad=True)
    args = dict(surrogate="elu", alpha=0.7713, bits=4)  # a configuration no other test uses
    with torch.device("meta"):
        y = sk.sugar_relu(x * 1, **args)
    assert y.device == x.device and torch.equal(y, torch.relu(x.detach()))
    go = torch.randn(x.shape, generator=_gen(24))
    (grad,) = torch.autograd.grad(y, x, go)
    levels, thr, icodes = C.tables("elu", args["alpha"], "all", 4, x.device, x.dtype)
    idx = C.unpack(C.encode_reference(x.detach(), thr, icodes, 4), 4, x.numel()).view(x.shape)
    assert_bitwise_equal(grad, go * levels[idx], "grad of a code mode first used under a device")


def test_code_tables_of_configurations_first_met_by_two_threads_at_once(monkeypatch):
    """Two threads meeting two new configurations at the same moment (nn.DataParallel replicas,
    a serving thread pool) each get their own tables. The barrier holds the first thread inside
    the table build until the second arrives (or 1 s passes, when a lock keeps it out)."""
    barrier = threading.Barrier(2, timeout=1.0)
    build = C.tables

    def tables_meeting_the_other_thread(*key):
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return build(*key)

    monkeypatch.setattr(C, "tables", tables_meeting_the_other_thread)
    configs = [("nelu", 0.0517, "all", 8), ("nelu", 0.0518, "negative", 2)]  # used nowhere else
    cpu, f32 = torch.device("cpu"), torch.float32
    got = {}

    def first_use(config):
        got[config] = C.kernel_tables(*config, cpu, f32)

    threads = [threading.Thread(target=first_use, args=(config,)) for config in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for config in configs:
        for table in (got[config], C.kernel_tables(*config, cpu, f32)):
            assert torch.equal(table.levels, build(*config, cpu, f32)[0]), config


def test_torchscript_says_what_to_use_instead():
    model = nn.Sequential(nn.Linear(4, 4), sk.SugarReLU(bits=8))
    x = torch.randn(3, 4, generator=_gen(41))
    want = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        with pytest.raises(RuntimeError, match="TorchScript.*torch.compile.*sk.strip"):
            torch.jit.script(model)
        scripted = torch.jit.script(sk.strip(model))
    assert torch.equal(scripted(x), want)


def test_torch_export_does_not_poison_table_cache(monkeypatch):
    monkeypatch.setattr(C, "_TABLES", {})
    sk.sugar_relu(torch.randn(4), bits=8)  # quantizer cached; float64 tables not yet built
    torch.export.export(sk.SugarReLU(bits=8), (torch.randn(8, dtype=torch.float64),))
    x = torch.randn(16, dtype=torch.float64, requires_grad=True)
    y = sk.sugar_relu(x, bits=8)
    assert type(y) is torch.Tensor, f"eager output after export is a {type(y).__name__}"
    assert torch.equal(y, torch.relu(x.detach()))


# ---------------------------------------------------------------------------------------------
# torch.func: grad / vjp / jacrev / vmap (per-sample gradients), sugar_kernels/python_autograd.py
# ---------------------------------------------------------------------------------------------
def _func_case(backend, mode, seed=11, device="cpu"):
    kwargs = dict(MODES[mode], backend=backend)
    x = torch.randn(4, 37, generator=_gen(seed)).to(device)  # 37: a row's codes end mid-byte
    weight = torch.randn(37, generator=_gen(seed + 1)).to(device)

    def loss(v):  # v * 1: in place needs a non-leaf
        return (sk.sugar_relu(v * 1, "bsilu", **kwargs) * weight).sum()

    xg = x.clone().requires_grad_()
    loss(xg).backward()
    return x, loss, weight, xg.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_func_grad_vjp_and_per_sample_grads_match_autograd(backend, mode):
    _check_func_transforms(backend, mode, "cpu")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS + ["reference"])
def test_func_transforms_cuda(backend, mode):
    _check_func_transforms(backend, mode, "cuda")


def _check_func_transforms(backend, mode, device):
    x, loss, weight, expected = _func_case(backend, mode, device=device)
    assert_bitwise_equal(torch.func.grad(loss)(x), expected, "torch.func.grad")
    kwargs = dict(MODES[mode], backend=backend)
    y, vjp = torch.func.vjp(lambda v: sk.sugar_relu(v * 1, "bsilu", **kwargs), x)
    assert_bitwise_equal(y, torch.relu(x), "torch.func.vjp forward")
    assert_bitwise_equal(vjp(weight.expand_as(x))[0], expected, "torch.func.vjp")
    # per-sample gradients: the rows are independent, so each is its row of the batch gradient
    per_sample = torch.func.vmap(torch.func.grad(loss))(x)
    assert_bitwise_equal(per_sample, expected, "vmap(grad)")
    functional = dict(backend=backend, bits=MODES[mode].get("bits"))
    jac = torch.func.jacrev(lambda v: sk.sugar_relu(v, "bsilu", **functional))(x[0])
    row = x[0].clone().requires_grad_()
    sk.sugar_relu(row, "bsilu", **functional).sum().backward()
    assert_bitwise_equal(jac, torch.diag(row.grad), "jacrev: diagonal g(x)")


VMAP_CASES = {  # bits=8 / bits=1 on 40-element rows: one call per batch; bits=4 on 37: per sample
    "exact": ({}, 37),
    "bits8": ({"bits": 8}, 37),
    "bits4-ragged": ({"bits": 4}, 37),
    "bits1-inplace": ({"bits": 1, "inplace": True}, 40),
}


@pytest.mark.parametrize("case", VMAP_CASES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_func_vmap_rules_without_fallback(backend, case):
    # The ops have vmap rules, so PyTorch's per-sample fallback (which warns "There is a
    # performance drop ... batching rule") never runs. vmap(grad), grad(vmap), in_dims=1,
    # nested vmap, jacrev (a batch of cotangents over one sample's codes).
    kwargs, n = VMAP_CASES[case]
    kwargs = dict(kwargs, backend=backend)
    functional = {k: v for k, v in kwargs.items() if k != "inplace"}
    x = torch.randn(4, n, generator=_gen(21))
    weight = torch.randn(n, generator=_gen(22))

    def loss(v):
        return (sk.sugar_relu(v * 1, "bsilu", **kwargs) * weight).sum()

    xg = x.clone().requires_grad_()
    loss(xg).backward()
    row = x[0].clone().requires_grad_()
    sk.sugar_relu(row, "bsilu", **functional).sum().backward()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        per_sample = torch.func.vmap(torch.func.grad(loss))(x)
        outer = torch.func.grad(lambda v: torch.func.vmap(loss)(v).sum())(x)
        columns = torch.func.vmap(lambda v: sk.sugar_relu(v, **functional), in_dims=1)(x)
        nested = torch.func.vmap(torch.func.vmap(lambda v: sk.sugar_relu(v, **functional)))(
            x.view(2, 2, n)
        )
        jac = torch.func.jacrev(lambda v: sk.sugar_relu(v, "bsilu", **functional))(x[0])
    fallbacks = [str(w.message) for w in seen if "batching rule" in str(w.message)]
    assert not fallbacks, fallbacks
    assert_bitwise_equal(per_sample, xg.grad, "vmap(grad)")
    assert_bitwise_equal(outer, xg.grad, "grad(vmap)")
    assert_bitwise_equal(columns, torch.relu(x).T, "vmap in_dims=1")
    assert_bitwise_equal(nested, torch.relu(x).view(2, 2, n), "nested vmap")
    assert_bitwise_equal(jac, torch.diag(row.grad), "jacrev")


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_func_vmap_of_empty_samples(bits):
    x = torch.randn(3, 0)
    assert torch.func.vmap(lambda v: sk.sugar_relu(v, bits=bits))(x).shape == (3, 0)
    grad = torch.func.vmap(torch.func.grad(lambda v: sk.sugar_relu(v * 1, bits=bits).sum()))(x)
    assert grad.shape == (3, 0)


def test_func_second_order_and_forward_mode_raise_clear_errors():
    x = torch.randn(9, generator=_gen(3))

    def f(v):
        return sk.sugar_relu(v, "bsilu").sum()

    with pytest.raises(NotImplementedError, match="second derivatives through torch.func"):
        torch.func.jacrev(torch.func.jacrev(f))(x)
    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.jvp(f, (x,), (x,))
    # a transform's result differentiated by plain autograd keeps its double backward
    xg = x.clone().requires_grad_()
    (h,) = torch.autograd.grad(torch.func.grad(f)(xg).sum(), xg)
    x2 = x.clone().requires_grad_()
    (g2,) = torch.autograd.grad(f(x2), x2, create_graph=True)
    assert_bitwise_equal(h, torch.autograd.grad(g2.sum(), x2)[0], "outer double backward")


def test_func_transforms_build_real_code_tables(monkeypatch):
    """A code configuration first used inside a transform builds its quantiser and tables
    outside it, as real cached tensors (this used to fail with "Cannot access data pointer" and
    could leave functorch wrappers in the cache)."""
    monkeypatch.setattr(C, "_TABLES", {})
    args = dict(surrogate="elu", alpha=0.66, bits=4)  # a quantiser no other test computes
    x = torch.randn(3, 64, generator=_gen(7))
    go = torch.randn(x.shape, generator=_gen(8))
    grad = torch.func.grad(lambda v: (sk.sugar_relu(v * 1, **args) * go).sum())(x)
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    for table in C._TABLES.values():
        for t in table if isinstance(table, tuple) else (table,):
            assert type(t) is torch.Tensor and not wrapped(t)
    levels, thr, icodes = C.tables("elu", 0.66, "all", 4, x.device, x.dtype)
    idx = C.unpack(C.encode_reference(x, thr, icodes, 4), 4, x.numel()).view(x.shape)
    assert_bitwise_equal(grad, go * levels[idx], "grad of a code mode first used in a transform")
    xg = x.clone().requires_grad_()
    sk.sugar_relu(xg, **args).backward(go)
    assert_bitwise_equal(xg.grad, grad, "eager grad after the transform")


# ---------------------------------------------------------------------------------------------
# Autocast: the op follows its input's dtype, exactly like torch.relu
# ---------------------------------------------------------------------------------------------
def _check_autocast(device, amp_dtype, backend, mode):
    kwargs = MODES[mode]
    g = _gen(3)
    lin1, lin2 = nn.Linear(12, 32).to(device), nn.Linear(32, 4).to(device)
    x = (torch.randn(8, 12, generator=g) * 2).to(device)
    with torch.autocast(device, dtype=amp_dtype):
        h = lin1(x)
        assert h.dtype == amp_dtype
        h_in = h.detach().clone()
        h.retain_grad()
        # in-place needs a non-leaf that is not needed elsewhere
        a = h * 1 if kwargs.get("inplace") else h
        y = sk.sugar_relu(a, "bsilu", backend=backend, **kwargs)
        assert y.dtype == torch.relu(h_in).dtype == amp_dtype
        assert_bitwise_equal(y, torch.relu(h_in), "autocast forward")
        out = lin2(y)
        # float32 inputs stay float32 under autocast, as with torch.relu
        y32 = sk.sugar_relu(x, "bsilu", backend=backend, bits=kwargs.get("bits"))
        assert y32.dtype == torch.relu(x).dtype == torch.float32
    go = torch.randn(out.shape, generator=_gen(4)).to(device, out.dtype)
    out.backward(go)
    assert h.grad.dtype == amp_dtype
    # the upstream gradient at y, recomputed the same way (lin2 under autocast)
    with torch.autocast(device, dtype=amp_dtype):
        yr = torch.relu(h_in).requires_grad_()
        (gy,) = torch.autograd.grad(lin2(yr), yr, go)
    if kwargs.get("bits") is None:
        assert_grad_close(h.grad, oracle_grad(gy, h_in, "bsilu", None, "all"), gy, amp_dtype)
    else:
        levels, thr, icodes = C.tables("bsilu", 1.67, "all", 8, h_in.device, h_in.dtype)
        idx = C.unpack(C.encode_reference(h_in, thr, icodes, 8), 8, h_in.numel())
        expected = (gy.to(levels.dtype) * levels[idx].view(h_in.shape)).to(amp_dtype)
        assert_bitwise_equal(h.grad, expected, "autocast code-mode grad")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_cpu_bfloat16(backend, mode):
    if backend == "triton":
        pytest.skip("the Triton interpreter has no bfloat16; covered on GPU")
    _check_autocast("cpu", torch.bfloat16, backend, mode)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS + ["reference"])
def test_autocast_cuda(backend, mode, amp_dtype):
    _check_autocast("cuda", amp_dtype, backend, mode)


# ---------------------------------------------------------------------------------------------
# Activation checkpointing and save_on_cpu
# ---------------------------------------------------------------------------------------------
def _block_grads(backend, kwargs, wrap, device="cpu"):
    from torch.utils.checkpoint import checkpoint

    net = _mlp(backend, **kwargs).to(device)
    x = (torch.randn(10, 12, generator=_gen(5)) * 2).to(device).requires_grad_()

    def body(t):
        return net(t)

    if wrap == "plain":
        out = body(x)
    elif wrap == "checkpoint-nonreentrant":
        out = checkpoint(body, x, use_reentrant=False)
    elif wrap == "checkpoint-reentrant":
        out = checkpoint(body, x, use_reentrant=True)
    elif wrap == "save_on_cpu":
        with torch.autograd.graph.save_on_cpu(pin_memory=device == "cuda"):
            out = body(x)
    else:
        raise AssertionError(wrap)
    out.square().mean().backward()
    return [p.grad for p in net.parameters()] + [x.grad]


@pytest.mark.parametrize("wrap", ["checkpoint-nonreentrant", "checkpoint-reentrant", "save_on_cpu"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_checkpointing_and_save_on_cpu_same_gradients(backend, mode, wrap):
    plain = _block_grads(backend, MODES[mode], "plain")
    wrapped = _block_grads(backend, MODES[mode], wrap)
    for i, (a, b) in enumerate(zip(wrapped, plain, strict=True)):
        assert_bitwise_equal(a, b, f"{wrap} grad {i}")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("wrap", ["checkpoint-nonreentrant", "save_on_cpu"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_checkpointing_cuda(backend, mode, wrap):
    plain = _block_grads(backend, MODES[mode], "plain", "cuda")
    wrapped = _block_grads(backend, MODES[mode], wrap, "cuda")
    for i, (a, b) in enumerate(zip(wrapped, plain, strict=True)):
        assert_bitwise_equal(a, b, f"{wrap} grad {i}")


# ---------------------------------------------------------------------------------------------
# DDP: two gloo processes train to the same parameters as one process on the global batch
# ---------------------------------------------------------------------------------------------
DDP_STEPS = 4
DDP_BATCH = 16


def _ddp_model(backend):
    torch.manual_seed(0)  # only inside the spawned workers / under fork_rng in the test
    net = nn.Sequential(
        nn.Linear(8, 32),
        sk.SugarReLU("bsilu", backend=backend),
        nn.Linear(32, 32),
        sk.SugarReLU("nelu", region="negative", bits=8, inplace=True, backend=backend),
        nn.Linear(32, 1),
    )
    return net.double()


def _ddp_data():
    g = _gen(7)
    x = torch.randn(DDP_BATCH, 8, generator=g, dtype=torch.float64) * 2
    return x, torch.randn(DDP_BATCH, 1, generator=g, dtype=torch.float64)


def _train(model, x, t):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(DDP_STEPS):
        opt.zero_grad()
        F.mse_loss(model(x), t).backward()
        opt.step()


def _ddp_worker(rank, world, init_file, out_dir, backends):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, t = _ddp_data()
        per = DDP_BATCH // world
        local = slice(rank * per, (rank + 1) * per)
        for backend in backends:
            model = _ddp_model(backend)
            _train(DDP(model), x[local], t[local])
            if rank == 0:
                torch.save(model.state_dict(), os.path.join(out_dir, f"{backend}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)
def test_ddp_gloo_two_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    backends = [b for b in CPU_BACKENDS if b != "triton"]  # interpreter env is not inherited
    mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), backends),
        nprocs=2,
        join=True,
    )
    x, t = _ddp_data()
    for backend in backends:
        with torch.random.fork_rng():
            single = _ddp_model(backend)
        before = copy.deepcopy(single.state_dict())
        _train(single, x, t)
        ddp_state = torch.load(tmp_path / f"{backend}.pt")
        for name, expected in single.state_dict().items():
            assert not torch.equal(expected, before[name]), f"{name} did not train"
            # only the order of the gradient summation differs (allreduce vs one batch)
            torch.testing.assert_close(
                ddp_state[name], expected, rtol=1e-12, atol=1e-12, msg=f"{backend} {name}"
            )


# ---------------------------------------------------------------------------------------------
# Deployment: strip and ONNX
# ---------------------------------------------------------------------------------------------
def _conv_net() -> nn.Sequential:
    g = _gen(11)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
        nn.ReLU(),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        net[1].running_mean.copy_(torch.randn(8, generator=g) * 0.1)
        net[1].running_var.copy_(torch.rand(8, generator=g) + 0.5)
    return net.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
def test_strip_gives_nn_relu_with_bitwise_forward(mode, dtype):
    original = _conv_net().to(dtype)
    kwargs = MODES[mode]
    converted = sk.convert(copy.deepcopy(original), "silu", **kwargs)
    x = (torch.randn(2, 3, 6, 6, generator=_gen(12)) * 2).to(dtype)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -0.0]).to(dtype)
    with torch.no_grad():
        y_converted = converted(x.clone())
        stripped = sk.strip(converted)
        kinds = [type(m) for m in stripped.modules()]
        assert sk.SugarReLU not in kinds and kinds.count(nn.ReLU) == 3
        # inplace survives the round trip (code modes take it from the replaced nn.ReLU unless
        # inplace= is given; exact mode never runs in place)
        if "inplace" in kwargs:
            expect_inplace = [kwargs["inplace"]] * 3
        else:
            expect_inplace = [True, False, False] if kwargs.get("bits") else [False] * 3
        assert [m.inplace for m in stripped.modules() if type(m) is nn.ReLU] == expect_inplace
        assert_bitwise_equal(stripped(x.clone()), y_converted, "stripped forward")
        assert_bitwise_equal(stripped(x.clone()), original(x.clone()), "original forward")


def _onnx_modules():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from sugar_kernels.export import export_onnx

    return ort, export_onnx


def _run_onnx(ort, program, x):
    sess = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _assert_standard_relu_graph(model_proto, n_relu):
    nodes = list(model_proto.graph.node)
    ops = [n.op_type for n in nodes]
    assert ops.count("Relu") == n_relu, ops
    assert all(n.domain in ("", "ai.onnx") for n in nodes), [(n.op_type, n.domain) for n in nodes]
    assert {o.domain for o in model_proto.opset_import} <= {"", "ai.onnx"}
    assert not model_proto.functions, [f.name for f in model_proto.functions]


@pytest.mark.parametrize("mode", MODES)
def test_onnx_export_converted_model_is_standard_relu(mode):
    ort, export_onnx = _onnx_modules()
    original = _conv_net()
    converted = sk.convert(copy.deepcopy(original), "bsilu", **MODES[mode])
    x = torch.randn(2, 3, 6, 6, generator=_gen(13)) * 2
    with torch.no_grad():
        expected = converted(x.clone())
    program = export_onnx(converted, (x.clone(),))
    # the caller's model is untouched
    assert sum(isinstance(m, sk.SugarReLU) for m in converted.modules()) == 3
    _assert_standard_relu_graph(program.model_proto, 3)
    got = _run_onnx(ort, program, x)
    # onnxruntime's Conv/Gemm accumulate in another order than torch: float32 rounding only
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # ...and the graph is exactly the plain ReLU model's: same onnxruntime output bit for bit
    plain = torch.onnx.export(original, (x.clone(),), dynamo=True)
    assert_bitwise_equal(got, _run_onnx(ort, plain, x), "onnx sugar vs onnx relu")


class _Functional(nn.Module):
    """sk.sugar_relu called directly in forward (no module for strip to replace)."""

    def __init__(self, bits):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.bits = bits

    def forward(self, x):
        return sk.sugar_relu(self.lin(x), "gelu", bits=self.bits) * 2


@pytest.mark.skipif(not COMPILED_CPU, reason="C++ CPU kernels not built")
@pytest.mark.parametrize("bits", [None, 8])
def test_onnx_export_functional_calls_translate_to_relu(bits):
    ort, export_onnx = _onnx_modules()
    net = _Functional(bits).eval()
    x = torch.randn(4, 6, generator=_gen(14)) * 2
    program = export_onnx(net, (x,))
    _assert_standard_relu_graph(program.model_proto, 1)
    with torch.no_grad():
        torch.testing.assert_close(_run_onnx(ort, program, x), net(x), rtol=1e-6, atol=1e-7)


def test_export_onnx_writes_a_valid_file_and_rejects_the_legacy_exporter(tmp_path):
    _onnx_modules()
    import onnx

    net = sk.convert(_conv_net(), "gelu", bits=4)
    x = torch.randn(1, 3, 6, 6, generator=_gen(15))
    path = tmp_path / "model.onnx"
    from sugar_kernels.export import export_onnx

    export_onnx(net, (x,), str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    _assert_standard_relu_graph(model, 3)
    with pytest.raises(ValueError, match="dynamo=True"):
        export_onnx(net, (x,), dynamo=False)
    assert sum(isinstance(m, sk.SugarReLU) for m in net.modules()) == 3


def test_onnx_relu_matches_sugar_forward_on_special_values():
    """ONNX Relu of the exported activation equals SUGAR's forward bit for bit (-0.0, +-inf,
    subnormals included); NaN stays NaN (payload bits are up to each runtime's vector code)."""
    ort, export_onnx = _onnx_modules()
    samples = dict(sample_inputs("cpu", torch.float32))
    x = torch.cat([samples["special"], samples["size-1023"]])
    act = sk.SugarReLU("elu").eval()
    program = export_onnx(act, (x,))
    _assert_standard_relu_graph(program.model_proto, 1)
    got, expected = _run_onnx(ort, program, x), act(x)
    assert torch.equal(got.isnan(), expected.isnan())
    nan = got.isnan()
    assert_bitwise_equal(got[~nan], expected[~nan], "onnx relu (non-NaN)")


# ---------------------------------------------------------------------------------------------
# nn.Module behaviour: state_dict, deepcopy, pickle, repr
# ---------------------------------------------------------------------------------------------
MODULE_CONFIGS = [
    {},
    {"surrogate": "nelu", "alpha": 0.25, "region": "negative"},
    {"surrogate": "gelu", "bits": 4, "inplace": True},
    {"surrogate": "leaky_relu", "bits": 1, "backend": "reference"},
]


def _config(m: sk.SugarReLU) -> tuple:
    return (m.surrogate, m.alpha, m.region, m.bits, m.inplace, m.backend)


@pytest.mark.parametrize("kwargs", MODULE_CONFIGS, ids=lambda k: "-".join(map(str, k.values())))
def test_module_behaves_like_nn_relu(kwargs):
    m = sk.SugarReLU(**kwargs)
    relu = nn.ReLU(inplace=kwargs.get("inplace", False))
    # no parameters, no buffers, an empty state_dict that loads strictly, like nn.ReLU
    assert list(m.parameters()) == [] and list(m.buffers()) == []
    assert m.state_dict() == relu.state_dict() == {}
    assert m.load_state_dict(relu.state_dict(), strict=True) == relu.load_state_dict({})
    # repr: one line "Name(args)", and it rebuilds an equal module, as repr(nn.ReLU(True)) does
    assert "\n" not in repr(m) and repr(m).startswith("SugarReLU(")
    rebuilt = eval(repr(m), {"SugarReLU": sk.SugarReLU})
    assert _config(rebuilt) == _config(m)
    assert eval(repr(relu), {"ReLU": nn.ReLU}).inplace == relu.inplace
    # deepcopy and pickle give an independent module with the same configuration and forward
    x = torch.randn(3, 7, generator=_gen(15)) * 3
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone is not m and type(clone) is sk.SugarReLU
        assert _config(clone) == _config(m) and repr(clone) == repr(m)
        assert_bitwise_equal(clone(x.clone()), relu(x.clone()), "clone forward")
    # dtype/device moves and train/eval change nothing, as for nn.ReLU
    m2 = copy.deepcopy(m).double().eval()
    assert _config(m2) == _config(m)
    assert_bitwise_equal(m2(x.double()), torch.relu(x.double()), "double forward")


def test_converted_model_state_dict_pickle_and_repr():
    original = _conv_net()
    converted = sk.convert(copy.deepcopy(original), "bsilu", bits=8)
    # the same keys and tensors as the nn.ReLU model, both ways, strictly
    assert converted.state_dict().keys() == original.state_dict().keys()
    plain = _conv_net()
    plain.load_state_dict(converted.state_dict(), strict=True)
    converted.load_state_dict(original.state_dict(), strict=True)
    # weights_only loading (the safe default) works: SUGAR adds no state of its own
    buf = io.BytesIO()
    torch.save(converted.state_dict(), buf)
    buf.seek(0)
    converted.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    # pickling the whole model
    x = torch.randn(2, 3, 6, 6, generator=_gen(16))
    restored = pickle.loads(pickle.dumps(converted))
    assert repr(restored) == repr(converted)
    with torch.no_grad():
        assert_bitwise_equal(restored(x.clone()), converted(x.clone()), "pickled model")
    # the model's repr lists SugarReLU exactly where nn.ReLU was
    lines_o, lines_c = repr(original).splitlines(), repr(converted).splitlines()
    assert len(lines_o) == len(lines_c)
    for lo, lc in zip(lines_o, lines_c, strict=True):
        if "ReLU(" in lo:
            assert "SugarReLU(surrogate='bsilu', alpha=1.67, bits=8" in lc
        else:
            assert lo == lc


# ---------------------------------------------------------------------------------------------
# GPU only: CUDA graphs through torch.compile(mode="reduce-overhead")
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_compile_reduce_overhead_cuda_graphs(backend, mode):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    net = _mlp(backend, **MODES[mode]).cuda()
    eager_net = copy.deepcopy(net)
    compiled = torch.compile(net, mode="reduce-overhead", fullgraph=True)
    for step in range(4):  # warm-up, recording, then replays
        x = (torch.randn(32, 12, generator=_gen(100 + step)) * 2).cuda()
        loss_c, grads_c = _loss_and_grads_compiled(compiled, net, x)
        loss_e, grads_e = _loss_and_grads(eager_net, x)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        for gc, ge in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6)
    if not MODES[mode].get("inplace"):
        # the graphs really were captured (an in-place op on an input may make inductor skip)
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    torch._dynamo.reset()


def _loss_and_grads_compiled(compiled, net, x):
    net.zero_grad(set_to_none=True)
    xl = x.detach().clone().requires_grad_()
    loss = compiled(xl).square().mean()
    loss.backward()
    return loss.detach().clone(), [p.grad.clone() for p in net.parameters()] + [xl.grad.clone()]
