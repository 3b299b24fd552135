"""torch.library.opcheck on the compiled ops (and the reference backend's op family, which
shares their schemas, fake kernels and autograd rule) and torch.compile(fullgraph=True) on CPU.

They need the compiled CPU kernel; without it the tests skip with the reason.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bitwise_equal, sample_inputs

import sugar_kernels as sk

pytestmark = pytest.mark.skipif(
    not sk.build_info()["cpu_compiled"],
    reason="the compiled CPU kernel (sugar_kernels._C) is not built; run `make install`",
)

OPCHECK_CASES = [
    (torch.float32, "bsilu", 1.67, "all"),
    (torch.float64, "gelu", 0.0, "negative"),
    (torch.float16, "mish", 0.0, "all"),
    (torch.bfloat16, "nelu", 0.25, "negative"),
]


def _opcheck_samples(dtype):
    """sample_inputs without NaN: opcheck compares outputs with assert_close(equal_nan=False),
    so a NaN output would fail it by construction. NaN (and its bit pattern) is checked in
    test_core; here +-inf, -0.0 and the extremes stay."""
    for name, x in sample_inputs("cpu", dtype):
        if x.isnan().any():
            x = x[~x.isnan()]
        yield name, x


def _case_id(case):
    dtype, surrogate, _, region = case
    return f"{str(dtype).removeprefix('torch.')}-{surrogate}-{region}"


@pytest.mark.parametrize("prefix", ["", "reference_"])
@pytest.mark.parametrize(
    "dtype, surrogate, alpha, region", OPCHECK_CASES, ids=[_case_id(c) for c in OPCHECK_CASES]
)
def test_opcheck_relu_forward(dtype, surrogate, alpha, region, prefix):
    for name, x in _opcheck_samples(dtype):
        # requires_grad=True: also runs test_autograd_registration and traces the backward
        args = (x.detach().clone().requires_grad_(), surrogate, alpha, region)
        try:
            torch.library.opcheck(getattr(torch.ops.sugar, prefix + "relu_forward"), args)
        except Exception as exc:
            raise AssertionError(f"opcheck relu_forward failed on {name}: {exc}") from exc


@pytest.mark.parametrize("prefix", ["", "reference_"])
@pytest.mark.parametrize(
    "dtype, surrogate, alpha, region", OPCHECK_CASES, ids=[_case_id(c) for c in OPCHECK_CASES]
)
def test_opcheck_relu_backward(dtype, surrogate, alpha, region, prefix):
    for name, x in _opcheck_samples(dtype):
        grad_y = torch.randn(x.shape, dtype=torch.float64).to(dtype)
        args = (grad_y, x, surrogate, alpha, region)
        try:
            torch.library.opcheck(getattr(torch.ops.sugar, prefix + "relu_backward"), args)
        except Exception as exc:
            raise AssertionError(f"opcheck relu_backward failed on {name}: {exc}") from exc


def test_fake_kernels_match_real_layout():
    """Meta/fake outputs have the real outputs' shape, dtype and strides (channels_last too)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for name, x in sample_inputs("cpu", torch.float32):
        y = torch.ops.sugar.relu_forward(x, "bsilu", 1.67, "all")
        g = torch.ops.sugar.relu_backward(torch.ones_like(x), x, "bsilu", 1.67, "all")
        with FakeTensorMode() as mode:
            fx = mode.from_tensor(x)
            fy = torch.ops.sugar.relu_forward(fx, "bsilu", 1.67, "all")
            fg = torch.ops.sugar.relu_backward(torch.ones_like(fx), fx, "bsilu", 1.67, "all")
        for real, fake in ((y, fy), (g, fg)):
            assert fake.shape == real.shape and fake.dtype == real.dtype, name
            assert fake.stride() == real.stride(), f"{name}: {fake.stride()} != {real.stride()}"


class _Net(torch.nn.Module):
    def __init__(self, surrogate, region):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 6 * 6, 5)
        self.surrogate, self.region = surrogate, region

    def forward(self, x):
        h = sk.sugar_relu(self.conv(x), self.surrogate, region=self.region, backend="cpu")
        h = h.flatten(1)
        return sk.sugar_relu(self.fc(h) - 0.5, self.surrogate, region=self.region)


@pytest.mark.parametrize("surrogate, region", [("bsilu", "all"), ("nelu", "negative")])
def test_torch_compile_fullgraph_matches_eager(surrogate, region):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = _Net(surrogate, region)
    x = torch.randn(4, 3, 6, 6, generator=gen)
    target = torch.randn(4, 5, generator=gen)

    def loss_and_grads(model):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        out = model(xi) if model is net else model(xi)
        loss = torch.nn.functional.mse_loss(out, target)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()] + [xi.grad.clone()]

    loss_eager, grads_eager = loss_and_grads(net)
    compiled = torch.compile(net, fullgraph=True, backend="inductor")
    loss_comp, grads_comp = loss_and_grads(compiled)
    torch._dynamo.reset()

    # inductor may reorder the float32 arithmetic around the op (conv/linear/mse), so allow
    # float32 rounding differences; the op itself is opaque to inductor.
    torch.testing.assert_close(loss_comp, loss_eager, rtol=1e-5, atol=1e-6)
    for gc, ge in zip(grads_comp, grads_eager, strict=True):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6)
    # SUGAR really is active in the compiled graph: dead units still pass gradient
    assert (grads_comp[-1] != 0).float().mean() > 0.9


def test_torch_compile_op_is_not_decomposed():
    """The compiled graph calls the custom op (no graph break, no fallback to the reference)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def f(t):
        return sk.sugar_relu(t, "gelu", region="negative").sum()

    x = torch.randn(16, requires_grad=True)
    out = torch.compile(f, fullgraph=True, backend=counter)(x)
    out.backward()
    assert counter.frame_count == 1
    graph_text = "\n".join(str(g.graph) for g in counter.graphs)
    assert "sugar.relu_forward" in graph_text
    expected = x.detach().clone().requires_grad_()
    f(expected).backward()
    assert_bitwise_equal(x.grad, expected.grad, "aot_eager grad")
    torch._dynamo.reset()
