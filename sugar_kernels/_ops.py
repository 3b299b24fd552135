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


def _setup_context(ctx, inputs, output):
    x, ctx.surrogate, ctx.alpha, ctx.region = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad_y):
    (x,) = ctx.saved_tensors
    grad_x = torch.ops.sugar.relu_backward(grad_y, x, ctx.surrogate, ctx.alpha, ctx.region)
    return grad_x, None, None, None


torch.library.register_autograd(f"{LIBRARY}::relu_forward", _backward, setup_context=_setup_context)


def has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY}::{op}", dispatch_key)
