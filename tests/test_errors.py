"""Bad input: every error names the problem (and, where there is a list, the valid choices)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import sugar_kernels as sk

CPU_COMPILED = sk.build_info()["cpu_compiled"]
needs_cpu_kernel = pytest.mark.skipif(not CPU_COMPILED, reason="CPU kernel not compiled")
WITH_ALPHA = [n for n, s in sk.SURROGATES.items() if s.has_alpha]
WITHOUT_ALPHA = [n for n, s in sk.SURROGATES.items() if not s.has_alpha]


@pytest.fixture
def x():
    return torch.randn(5, 3)


# ---------------------------------------------------------------------------------------------
# sugar_relu and SugarReLU argument checks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["foo", "BSiLU", "relu", "", None, 3])
def test_unknown_surrogate_lists_valid_names(x, bad):
    with pytest.raises(ValueError, match=re.escape(f"unknown surrogate {bad!r}")) as info:
        sk.sugar_relu(x, bad)
    for name in sk.SURROGATES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="unknown surrogate"):
        sk.SugarReLU(bad)


@pytest.mark.parametrize("surrogate", WITHOUT_ALPHA)
def test_alpha_for_surrogate_without_one(x, surrogate):
    with pytest.raises(ValueError, match=f"surrogate '{surrogate}' has no alpha parameter"):
        sk.sugar_relu(x, surrogate, alpha=0.5)
    with pytest.raises(ValueError, match="has no alpha parameter"):
        sk.SugarReLU(surrogate, alpha=0.5)
    # explicitly passing alpha=None is "no alpha" and fine
    sk.sugar_relu(x, surrogate, alpha=None)


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("surrogate", WITH_ALPHA)
def test_non_finite_alpha(x, surrogate, alpha):
    with pytest.raises(ValueError, match="alpha must be finite"):
        sk.sugar_relu(x, surrogate, alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be finite"):
        sk.SugarReLU(surrogate, alpha=alpha)


@pytest.mark.parametrize("alpha", ["0.1", True, torch.tensor(0.1), [0.1]])
def test_alpha_wrong_type(x, alpha):
    with pytest.raises(TypeError, match="alpha must be a real number"):
        sk.sugar_relu(x, "elu", alpha=alpha)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.int8,
        torch.uint8,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.complex64,
        torch.complex128,
    ],
)
def test_unsupported_tensor_dtype(dtype):
    t = torch.zeros(4, dtype=dtype)
    with pytest.raises(TypeError, match=re.escape(str(dtype))) as info:
        sk.sugar_relu(t)
    assert "float32" in str(info.value) and "bfloat16" in str(info.value)
    with pytest.raises(TypeError, match=re.escape(str(dtype))):
        sk.SugarReLU()(t)


@pytest.mark.parametrize("bits", [None, 8])
def test_sparse_and_nested_tensors_raise(bits):
    sparse = torch.randn(4, 4).to_sparse()
    nested = torch.nested.nested_tensor([torch.randn(3), torch.randn(5)], layout=torch.jagged)
    for t, what in ((sparse, "layout torch.sparse_coo"), (nested, "a nested tensor")):
        with pytest.raises(TypeError, match=f"dense \\(torch.strided\\) tensors, got {what}"):
            sk.sugar_relu(t, bits=bits)
        with pytest.raises(TypeError, match="dense"):
            sk.SugarReLU(bits=bits)(t)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="expects a torch.Tensor, got list"):
        sk.sugar_relu([1.0, -1.0])


@pytest.mark.parametrize("region", ["positive", "ALL", "", None])
def test_bad_region(x, region):
    with pytest.raises(ValueError, match=re.escape(f"unknown region {region!r}")) as info:
        sk.sugar_relu(x, region=region)
    assert "all" in str(info.value) and "negative" in str(info.value)
    with pytest.raises(ValueError, match="unknown region"):
        sk.SugarReLU(region=region)


@pytest.mark.parametrize("backend", ["gpu", "CPU", "", "torch"])
def test_unknown_backend(x, backend):
    with pytest.raises(ValueError, match=re.escape(f"unknown backend {backend!r}")) as info:
        sk.sugar_relu(x, backend=backend)
    for name in sk.BACKENDS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="unknown backend"):
        sk.SugarReLU(backend=backend)


def test_cuda_backend_on_cpu_tensor(x):
    with pytest.raises(ValueError, match="backend 'cuda' cannot run a tensor on device 'cpu'"):
        sk.sugar_relu(x, backend="cuda")
    with pytest.raises(ValueError, match="cannot run a tensor on device 'cpu'"):
        sk.SugarReLU(backend="cuda")(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available")
def test_cpu_backend_on_cuda_tensor():
    with pytest.raises(ValueError, match="backend 'cpu' cannot run a tensor on device 'cuda'"):
        sk.sugar_relu(torch.randn(3, device="cuda"), backend="cpu")


@pytest.mark.skipif("triton" in sk.available_backends("cpu"), reason="triton backend available")
def test_triton_backend_unavailable(x):
    with pytest.raises(RuntimeError, match="backend 'triton' is not available"):
        sk.sugar_relu(x, backend="triton")


@pytest.mark.skipif(CPU_COMPILED, reason="CPU kernel is compiled")
def test_cpu_backend_not_built(x):
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available"):
        sk.sugar_relu(x, backend="cpu")


def test_inplace_without_code_mode(x):
    with pytest.raises(ValueError, match="inplace=True needs a code mode"):
        sk.sugar_relu(x, inplace=True)
    with pytest.raises(ValueError, match="inplace=True needs a code mode"):
        sk.SugarReLU(inplace=True)
    with pytest.raises(ValueError, match="inplace=True needs a code mode"):
        sk.sugar_relu(x, inplace=True, bits=None)


def test_error_leaves_input_untouched(x):
    before = x.clone()
    with pytest.raises(ValueError):
        sk.sugar_relu(x, "nope")
    assert torch.equal(x, before)


def test_convert_validates_before_touching_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match="has no alpha parameter"):
        sk.convert(model, "gelu", alpha=0.3)
    assert isinstance(model[1], nn.ReLU)
    with pytest.raises(ValueError, match="unknown surrogate"):
        sk.convert(model, "nope")
    assert isinstance(model[1], nn.ReLU)


# ---------------------------------------------------------------------------------------------
# Direct op calls: the C++ host code validates its arguments too (TORCH_CHECK)
# ---------------------------------------------------------------------------------------------
# TORCH_CHECK raises RuntimeError; TORCH_CHECK_VALUE / _TYPE raise ValueError / TypeError.
OP_ERRORS = (RuntimeError, ValueError, TypeError)


@needs_cpu_kernel
def test_op_unknown_surrogate(x):
    with pytest.raises(OP_ERRORS, match="unknown surrogate 'foo'") as info:
        torch.ops.sugar.relu_forward(x, "foo", 1.0, "all")
    assert "bsilu" in str(info.value) and "leaky_relu" in str(info.value)
    with pytest.raises(OP_ERRORS, match="unknown surrogate 'foo'"):
        torch.ops.sugar.relu_backward(x, x, "foo", 1.0, "all")


@needs_cpu_kernel
def test_op_unknown_region(x):
    with pytest.raises(OP_ERRORS, match="unknown region 'pos'"):
        torch.ops.sugar.relu_forward(x, "bsilu", 1.0, "pos")
    with pytest.raises(OP_ERRORS, match="unknown region 'pos'"):
        torch.ops.sugar.relu_backward(x, x, "bsilu", 1.0, "pos")


@needs_cpu_kernel
@pytest.mark.parametrize("alpha", [math.nan, math.inf])
def test_op_non_finite_alpha(x, alpha):
    with pytest.raises(OP_ERRORS, match="alpha must be finite"):
        torch.ops.sugar.relu_backward(x, x, "elu", alpha, "all")


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_op_bad_dtype(dtype):
    t = torch.zeros(3, dtype=dtype)
    with pytest.raises(OP_ERRORS, match="float32, float64, float16 or bfloat16"):
        torch.ops.sugar.relu_forward(t, "bsilu", 1.67, "all")
    with pytest.raises(OP_ERRORS, match="float32, float64, float16 or bfloat16"):
        torch.ops.sugar.relu_backward(t, t, "bsilu", 1.67, "all")


@needs_cpu_kernel
def test_op_backward_shape_mismatch(x):
    with pytest.raises(OP_ERRORS, match="shape"):
        torch.ops.sugar.relu_backward(torch.randn(4, 3), x, "bsilu", 1.67, "all")


@needs_cpu_kernel
def test_op_backward_dtype_mismatch(x):
    with pytest.raises(OP_ERRORS, match="(?i)float|double"):
        torch.ops.sugar.relu_backward(x.double(), x, "bsilu", 1.67, "all")
