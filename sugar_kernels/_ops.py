"""torch.library registration of the compiled ops: schemas, fake kernels and autograd.

The schemas are defined here, once; ``csrc/`` only provides the CPU and CUDA implementations
(``TORCH_LIBRARY_IMPL``). If the extension is missing, the ops still exist (with fake kernels)
but have no CPU/CUDA kernel, and ``build_info()`` says why.
"""

from __future__ import annotations

import torch

LIBRARY = "sugar"
SCHEMAS = {
    "relu_forward": "(Tensor x, str surrogate, float alpha, str region) -> Tensor",
    "relu_backward": (
        "(Tensor grad_y, Tensor x, str surrogate, float alpha, str region) -> Tensor"
    ),
    # Code modes (sugar_kernels/codes.py): levels/thresholds in the opmath dtype on x's device.
    "relu_forward_codes": (
        "(Tensor x, Tensor levels, Tensor thresholds, Tensor interval_codes, int bits)"
        " -> (Tensor, Tensor)"
    ),
    "relu_forward_codes_": (
        "(Tensor(a!) x, Tensor levels, Tensor thresholds, Tensor interval_codes, int bits)"
        " -> Tensor"
    ),
    "relu_backward_codes": "(Tensor grad_y, Tensor codes, Tensor levels, int bits) -> Tensor",
}

_lib = torch.library.Library(LIBRARY, "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)

try:
    from . import _C  # noqa: F401  (registers the CPU/CUDA kernels on import)

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    EXTENSION_ERROR = f"sugar_kernels._C is not importable ({exc}); run `make install`"


@torch.library.register_fake(f"{LIBRARY}::relu_forward")
def _relu_forward_fake(x, surrogate, alpha, region):
    return torch.empty_like(x)


@torch.library.register_fake(f"{LIBRARY}::relu_backward")
def _relu_backward_fake(grad_y, x, surrogate, alpha, region):
    return torch.empty_like(x)


def _codes_fake(x, bits):
    per = 8 // bits
    return x.new_empty(((x.numel() + per - 1) // per,), dtype=torch.uint8)


@torch.library.register_fake(f"{LIBRARY}::relu_forward_codes")
def _relu_forward_codes_fake(x, levels, thresholds, interval_codes, bits):
    return torch.empty_like(x), _codes_fake(x, bits)


@torch.library.register_fake(f"{LIBRARY}::relu_forward_codes_")
def _relu_forward_codes_inplace_fake(x, levels, thresholds, interval_codes, bits):
    return _codes_fake(x, bits)


@torch.library.register_fake(f"{LIBRARY}::relu_backward_codes")
def _relu_backward_codes_fake(grad_y, codes, levels, bits):
    return torch.empty_like(grad_y, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, ctx.surrogate, ctx.alpha, ctx.region = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad_y):
    (x,) = ctx.saved_tensors
    grad_x = torch.ops.sugar.relu_backward(grad_y, x, ctx.surrogate, ctx.alpha, ctx.region)
    return grad_x, None, None, None


torch.library.register_autograd(f"{LIBRARY}::relu_forward", _backward, setup_context=_setup_context)


def _codes_setup_context(ctx, inputs, output):
    _, levels, _, _, ctx.bits = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1], levels)


def _codes_backward(ctx, grad_y, _grad_codes):
    codes, levels = ctx.saved_tensors
    grad_x = torch.ops.sugar.relu_backward_codes(grad_y, codes, levels, ctx.bits)
    return grad_x, None, None, None, None


torch.library.register_autograd(
    f"{LIBRARY}::relu_forward_codes", _codes_backward, setup_context=_codes_setup_context
)


class InplaceCodes(torch.autograd.Function):
    """In-place code mode: relu(x) written over x (mark_dirty), packed codes saved for backward.

    ``forward_op`` is the mutating op of the backend (C++ or Triton), ``backward_op`` its
    backward; the autograd engine then raises PyTorch's usual error for a leaf requiring grad.
    """

    @staticmethod
    def forward(x, levels, thresholds, interval_codes, bits, forward_op, backward_op):
        codes = forward_op(x, levels, thresholds, interval_codes, bits)
        return x, codes

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, levels, _, _, ctx.bits, _, ctx.backward_op = inputs
        ctx.mark_dirty(x)
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1], levels)

    @staticmethod
    def backward(ctx, grad_y, _grad_codes):
        codes, levels = ctx.saved_tensors
        grad_x = ctx.backward_op(grad_y, codes, levels, ctx.bits)
        return grad_x, None, None, None, None, None, None


def has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY}::{op}", dispatch_key)
