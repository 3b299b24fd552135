"""The Triton kernels on CPU tensors through the Triton interpreter (CI has no GPU).

Run with ``TRITON_INTERPRET=1 python -m pytest tests/triton_interpret`` (``make test`` does); the
variable must be set before Triton kernels are decorated, so these tests skip without it rather
than setting it themselves. The interpreter has no bfloat16; float16/float32/float64 run here,
bfloat16 and the compiled path run in tests/test_triton_gpu.py.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "Triton interpreter tests need TRITON_INTERPRET=1 in the environment before Python starts "
        "(run: TRITON_INTERPRET=1 python -m pytest tests/triton_interpret)",
        allow_module_level=True,
    )

from sugar_kernels import triton_kernels  # noqa: E402
from sugar_kernels.surrogates import resolve  # noqa: E402
from tests.helpers import (  # noqa: E402
    SURROGATE_ALPHAS,
    assert_bitwise_equal,
    assert_grad_close,
    grad_output_for,
    is_dense,
    oracle_grad,
    sample_inputs,
    surrogate_alpha_id,
)

if triton_kernels.IMPORT_ERROR is not None:
    pytest.skip(triton_kernels.IMPORT_ERROR, allow_module_level=True)

from sugar_kernels.triton_kernels import exact  # noqa: E402

# exp overflows (harmlessly) on the x > 0 side of elu/selu, which a select then discards; numpy
# warns about it where the compiled kernels are silent.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

REGIONS = ("all", "negative")
SAMPLES = dict(sample_inputs("cpu", torch.float32))


def run(x: torch.Tensor, surrogate: str, alpha, region: str, grad_out=None):
    """Forward and backward through triton_kernels; returns (x, y, grad_out, grad_x)."""
    _, alpha, _ = resolve(surrogate, alpha, region)
    x = x.detach().requires_grad_()
    y = triton_kernels.sugar_relu_triton(x, surrogate, alpha, region)
    if grad_out is None:
        grad_out = grad_output_for(y)
    y.backward(grad_out)
    return x, y, grad_out, x.grad


def mixed_input(dtype: torch.dtype) -> torch.Tensor:
    """Special values (NaN, +-Inf, +-0, extremes, clamp edges) and ~5800 N(0, 16) values with
    exact zeros: six 1024-element programs, the last one ragged."""
    s = dict(sample_inputs("cpu", dtype))
    return torch.cat([s["special"], s["size-1023"], s["2d-contiguous"].reshape(-1)])


def test_status():
    ok, why = triton_kernels.triton_status("cpu")
    assert ok, why
    ok, why = triton_kernels.triton_status("cuda")
    assert not ok and "TRITON_INTERPRET" in why


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("pair", SURROGATE_ALPHAS, ids=surrogate_alpha_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_matches_oracle(dtype, pair, region):
    surrogate, alpha = pair
    x, y, grad_out, grad_x = run(mixed_input(dtype), surrogate, alpha, region)
    assert_bitwise_equal(y, torch.relu(x.detach()), "forward")
    assert grad_x.dtype == dtype
    ref = oracle_grad(grad_out, x.detach(), surrogate, alpha, region)
    assert_grad_close(grad_x, ref, grad_out, msg=f"{surrogate} alpha={alpha} region={region}")


@pytest.mark.parametrize("name", list(SAMPLES))
def test_layouts_and_special_tensors(name):
    """0-dim, empty, sizes 1/7/1023, transposed, sliced, misaligned, permuted, expanded,
    channels_last, special values: forward bitwise, backward vs oracle, output layout."""
    x0 = SAMPLES[name]
    x, y, grad_out, grad_x = run(x0, "bsilu", None, "negative")
    assert_bitwise_equal(y, torch.relu(x0), name)
    assert_grad_close(
        grad_x, oracle_grad(grad_out, x0, "bsilu", None, "negative"), grad_out, msg=name
    )
    if is_dense(x0) and x0.numel() > 1:  # dense inputs keep their layout
        assert y.stride() == x0.stride(), name
        assert grad_x.stride() == x0.stride(), name


def check_size(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x0 = torch.randn(n, generator=g) * 4
    x, y, grad_out, grad_x = run(x0, "gelu", None, "all")
    assert_bitwise_equal(y, torch.relu(x0), f"n={n}")
    assert_grad_close(
        grad_x, oracle_grad(grad_out, x0, "gelu", None, "all"), grad_out, msg=f"n={n}"
    )


@pytest.mark.parametrize("n", [1, 7, 1023, 1024, 1025, 5000])
def test_sizes(n):
    """Small tensors: one fixed launch configuration (1024-element blocks)."""
    check_size(n)


@pytest.mark.parametrize("n", [1, 2048, 2049, 5000])
def test_sizes_autotuned_path(n, monkeypatch):
    """Large tensors go through triton.autotune (one 2048-element config under the interpreter);
    lower the size threshold so that path runs on small inputs."""
    monkeypatch.setattr(exact, "AUTOTUNE_MIN_ELEMENTS", 1)
    check_size(n)


@pytest.mark.parametrize("name", ["2d-contiguous", "transposed", "channels_last"])
def test_expanded_grad(name):
    """y.sum().backward() hands backward a stride-0 (expanded) gradient."""
    x0 = SAMPLES[name]
    x = x0.detach().requires_grad_()
    y = triton_kernels.sugar_relu_triton(x, "silu", 0.0, "all")
    y.sum().backward()
    ones = torch.ones_like(x0)
    assert_grad_close(x.grad, oracle_grad(ones, x0, "silu", None, "all"), ones, msg=name)
    assert x.grad.stride() == x0.stride()


def test_grad_in_other_layout():
    """A contiguous grad_y for a channels_last x is copied into x's layout, not misread."""
    x0 = SAMPLES["channels_last"]
    grad_out = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    assert grad_out.is_contiguous() and grad_out.stride() != x0.stride()
    grad_x = torch.ops.sugar.triton_relu_backward(grad_out, x0, "elu", 1.0, "all")
    assert_grad_close(grad_x, oracle_grad(grad_out, x0, "elu", None, "all"), grad_out)
    assert grad_x.stride() == x0.stride()


def test_saves_only_x():
    """Exact mode keeps x for backward and nothing else."""
    x = SAMPLES["2d-contiguous"].detach().requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        triton_kernels.sugar_relu_triton(x, "bsilu", 1.67, "all")
    assert len(saved) == 1 and saved[0].data_ptr() == x.data_ptr()


def test_errors():
    x = SAMPLES["size-7"]
    with pytest.raises(ValueError, match="unknown surrogate"):
        torch.ops.sugar.triton_relu_forward(x, "relu", 0.0, "all")
    with pytest.raises(ValueError, match="unknown region"):
        torch.ops.sugar.triton_relu_backward(x, x, "bsilu", 1.67, "positive")
    with pytest.raises(ValueError, match="finite"):
        torch.ops.sugar.triton_relu_forward(x, "elu", float("nan"), "all")
    with pytest.raises(ValueError, match="2\\^128"):
        torch.ops.sugar.triton_relu_forward(x, "elu", 1e39, "all")
    with pytest.raises(RuntimeError, match="shape"):
        torch.ops.sugar.triton_relu_backward(x[:3], x, "bsilu", 1.67, "all")
    with pytest.raises(TypeError, match="float64"):
        torch.ops.sugar.triton_relu_backward(x.double(), x, "bsilu", 1.67, "all")
    with pytest.raises(TypeError, match="must be float32"):
        torch.ops.sugar.triton_relu_forward(x.to(torch.int32), "bsilu", 1.67, "all")


def test_meta_tensors():
    """Shape propagation: meta inputs give meta outputs with the layout of (dense) x."""
    x = torch.empty(4, 5, device="meta").t()
    y = torch.ops.sugar.triton_relu_forward(x, "bsilu", 1.67, "all")
    g = torch.ops.sugar.triton_relu_backward(torch.empty(5, 4, device="meta"), x, "selu", 0, "all")
    for out in (y, g):
        assert out.is_meta and out.shape == x.shape and out.stride() == x.stride()


# test_aot_dispatch_dynamic needs the kernels traced by wrap_triton, which the interpreter does
# not support (the same reason torch.compile fails here); tests/test_triton_gpu.py runs all four.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("name", ["2d-contiguous", "channels_last", "empty"])
def test_opcheck(name):
    x = SAMPLES[name]
    grad_out = grad_output_for(x)
    torch.library.opcheck(
        torch.ops.sugar.triton_relu_forward,
        (x.detach().requires_grad_(), "bsilu", 1.67, "all"),
        test_utils=OPCHECK_UTILS,
    )
    torch.library.opcheck(
        torch.ops.sugar.triton_relu_backward,
        (grad_out, x, "mish", 0.0, "negative"),
        test_utils=OPCHECK_UTILS,
    )
