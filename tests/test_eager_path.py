"""The lean eager call (issue 12, item 3): C++ autograd for the compiled ops and the C++ entry
points that sugar_kernels.api uses for plain tensors. They must behave exactly like the
torch.ops path they shortcut: same values and gradients, the same dispatcher path (modes see the
ops), PyTorch's in-place rules (version counter, leaf errors, views)."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import sugar_kernels as sk
from sugar_kernels import _ops
from sugar_kernels.code_tables import kernel_tables

CPU_COMPILED = sk.build_info()["cpu_compiled"]
pytestmark = pytest.mark.skipif(not CPU_COMPILED, reason="CPU kernel not compiled")

# (kwargs of sugar_relu, whether the input must be a non-leaf because it is modified in place)
MODES = [
    ({"surrogate": "bsilu"}, False),
    ({"surrogate": "gelu", "region": "negative"}, False),
    ({"surrogate": "bsilu", "bits": 8}, False),
    ({"surrogate": "nelu", "bits": 1, "region": "negative"}, False),
    ({"surrogate": "bsilu", "bits": 4, "inplace": True}, True),
]
IDS = ["exact", "exact-negative", "bits8", "bits1", "bits4-inplace"]


class _Record(TorchFunctionMode):
    """A torch-function mode that lets every call through and records which ones were made."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


class _RecordDispatch(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def _run(kwargs, fresh, dtype=torch.float32):
    """(y, x.grad) of sugar_relu on a fixed input; ``fresh``: apply it to x * 1 (in place)."""
    torch.manual_seed(0)
    x = (torch.randn(3, 1000) * 3).to(dtype).requires_grad_()
    grad = torch.randn(3, 1000).to(dtype)
    inp = x * 1 if fresh else x
    y = sk.sugar_relu(inp, **kwargs)
    y.backward(grad)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kwargs,fresh", MODES, ids=IDS)
def test_direct_path_equals_torch_ops_path(kwargs, fresh, dtype):
    """Under a torch-function mode the API takes torch.ops (and the mode sees the sugar op);
    without one, the C++ entry point: the two give bit-identical outputs and gradients."""
    y_direct, g_direct = _run(kwargs, fresh, dtype)
    with _Record() as mode:
        y_ops, g_ops = _run(kwargs, fresh, dtype)
    assert any(call.startswith("sugar.relu_forward") for call in mode.calls), mode.calls
    assert torch.equal(y_direct, y_ops) and torch.equal(y_direct, torch.relu(y_direct))
    assert torch.equal(g_direct, g_ops)


@pytest.mark.parametrize("kwargs,fresh", MODES, ids=IDS)
def test_direct_path_goes_through_the_dispatcher(kwargs, fresh):
    """A dispatch mode (what FakeTensorMode, FlopCounterMode, ... build on) sees the forward and
    backward sugar ops on the eager path too."""
    with _RecordDispatch() as mode:
        _run(kwargs, fresh)
    forward = "sugar.relu_forward_codes" if "bits" in kwargs else "sugar.relu_forward."
    backward = "sugar.relu_backward_codes" if "bits" in kwargs else "sugar.relu_backward."
    assert any(call.startswith(forward) for call in mode.calls), mode.calls
    assert any(call.startswith(backward) for call in mode.calls), mode.calls


def test_cpp_autograd_registered_for_every_compiled_op():
    """The compiled ops' Autograd kernels are the C++ ones (csrc/autograd.cpp), not Python."""
    for op in ("relu_forward", "relu_backward", "relu_forward_codes", "relu_forward_codes_"):
        table = torch._C._dispatch_dump(f"sugar::{op}")
        line = next(row for row in table.splitlines() if row.startswith("Autograd"))
        assert "autograd.cpp" in line, line
    assert "autograd.cpp" in torch._C._dispatch_dump("sugar::relu_backward_codes")


def _tables(bits=8):
    return kernel_tables("bsilu", None, "all", bits, torch.device("cpu"), torch.float32)


def test_inplace_op_bumps_the_version_once_and_guards_saved_tensors():
    """relu_forward_codes_ called directly modifies x like relu_: one version bump, and a tensor
    autograd saved earlier is detected as modified."""
    x = torch.randn(64)
    before = x._version
    torch.ops.sugar.relu_forward_codes_(x, *_tables(), 8)
    assert x._version == before + 1
    a = torch.randn(64, requires_grad=True)
    h = a * 1
    z = h * h  # saves h
    sk.sugar_relu(h, bits=8, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_inplace_op_on_leaf_and_view_and_under_no_grad():
    leaf = torch.randn(8, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        torch.ops.sugar.relu_forward_codes_(leaf, *_tables(), 8)
    with torch.no_grad():  # allowed, as for relu_
        torch.ops.sugar.relu_forward_codes_(leaf, *_tables(), 8)
    assert torch.equal(leaf.detach(), torch.relu(leaf.detach()))
    with torch.inference_mode():
        t = torch.randn(8)
        torch.ops.sugar.relu_forward_codes_(t, *_tables(), 8)
        assert torch.equal(t, torch.relu(t))
    # A view of a non-leaf: the gradient flows through the view only, the rest is identity.
    b = (torch.randn(4, 16) * 3).requires_grad_()
    base = b * 1
    row = base[1]
    codes = torch.ops.sugar.relu_forward_codes_(row, *_tables(), 8)
    assert codes.dtype == torch.uint8 and not codes.requires_grad
    base.sum().backward()
    row_alone = b.detach()[1].clone().requires_grad_()
    sk.sugar_relu(row_alone, bits=8).backward(torch.ones(16))
    expected = torch.ones(4, 16)
    expected[1] = row_alone.grad
    assert torch.equal(b.grad, expected)


def test_backward_op_is_differentiable_directly():
    """relu_backward's own (C++) autograd: double backward through a direct op call."""
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    g = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x, g: torch.ops.sugar.relu_backward(g, x, "bsilu", 1.67, "all"), (x, g)
    )
    assert torch.autograd.gradcheck(
        lambda x, g: torch.ops.sugar.relu_backward(g, x, "gelu", 0.0, "negative"), (x, g)
    )


def test_eager_entry_points_check_arguments():
    """The C++ entry points reach the same op checks: bad input gets the op's clear error."""
    with pytest.raises(TypeError, match="x must be float32"):
        _ops._C.relu_forward(torch.arange(4), "bsilu", 1.0, "all")
    with pytest.raises(ValueError, match="unknown surrogate 'nope'"):
        _ops._C.relu_forward(torch.randn(4), "nope", 1.0, "all")
    with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8"):
        _ops._C.relu_forward_codes(torch.randn(4), *_tables(), 3)
