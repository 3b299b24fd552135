"""SUGAR on DTensor activations (tensor and sequence parallelism).

The activation is elementwise, so every rank computes it on its own local shard: the DTensor is
unwrapped with ``to_local()``, the ordinary (plain-tensor) SUGAR path runs on the shard with any
backend, and the result is wrapped back with ``DTensor.from_local`` in the input's placements.
Both wrappers are differentiable, so the shard's op keeps its own autograd: it saves the local
shard of x (exact mode) or the packed codes of the local shard (code modes), and the gradient
comes back as a DTensor in the input's placements. Nothing is communicated for the activation
itself, and the packed codes (whose byte layout is the local shard's) never become a DTensor:
a global view of per-shard codes would have no valid placement.

The exact-mode ops themselves (``sugar::relu_forward``, ``relu_backward`` and every backend's
variants) also get a pointwise sharding strategy, so calling them directly on DTensors works
(their autograd then runs at the DTensor level). The code-mode ops get none: their packed codes
have no global layout, so ``sugar_relu`` keeps them below the DTensor level as described above.

Placements follow ``torch.relu``: Shard (any dim) and Replicate are kept; a Partial input is
first redistributed to Replicate (relu of a partial sum is not the sum of the partial relus), as
DTensor does before a non-linear pointwise op. In place (code modes) is the functional
activation followed by ``x.copy_(y)`` on the DTensor; like ``torch.relu_``, it refuses a Partial
input, whose placement would have to change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.experimental import register_sharding
except ImportError:  # torch built without distributed support
    DTensor = None


def is_dtensor(x: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(x, DTensor)


def sugar_relu_dtensor(
    x: torch.Tensor, local_fn: Callable[[torch.Tensor], torch.Tensor], inplace: bool
) -> torch.Tensor:
    """``local_fn`` (an out-of-place SUGAR activation of a plain tensor) applied to each local
    shard of the DTensor ``x``; in place, the result is then copied into ``x``."""
    mesh, placements = x.device_mesh, tuple(x.placements)
    if any(p.is_partial() for p in placements):
        if inplace:
            raise RuntimeError(
                f"sugar_relu(inplace=True) got a DTensor with placements {placements}: relu of a "
                "partial sum needs the sum first, which changes the placement of x, so it cannot "
                "be done in place (torch.relu_ refuses it too); use inplace=False, or "
                "redistribute x to Replicate or Shard first"
            )
        placements = tuple(Replicate() if p.is_partial() else p for p in placements)
        x = x.redistribute(mesh, placements)
    local = _LocalShard.apply(x)
    y_local = local_fn(local)
    shape, stride = x.shape, x.stride()
    if y_local.stride() != local.stride():
        # A shard that is not dense gives a contiguous y (empty_like): describe it as such.
        y_local, stride = y_local.contiguous(), _contiguous_strides(shape)
    # The global size and strides are passed: the local ones times the mesh size would be wrong
    # for uneven shards.
    y = DTensor.from_local(y_local, mesh, placements, run_check=False, shape=shape, stride=stride)
    return x.copy_(y) if inplace else y


class _LocalShard(torch.autograd.Function):
    """``x.to_local()`` whose gradient is a DTensor with x's placements, size and strides.

    ``to_local``'s own backward derives the gradient's global strides from the local shard, which
    is wrong for uneven shards on a dimension other than the first; torch 2.11 then makes the
    gradient Replicate (a gather) when it is accumulated into a leaf with the right strides.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.meta = (x.device_mesh, tuple(x.placements), x.shape, x.stride())
        return x.to_local()

    @staticmethod
    def backward(ctx, grad):
        mesh, placements, shape, stride = ctx.meta
        return DTensor.from_local(
            grad, mesh, placements, run_check=False, shape=shape, stride=stride
        )


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _pointwise_sharding(*tensor_specs):
    """(output placements, input placements) options of an elementwise op, per mesh dimension:
    the same Shard(d) everywhere, or Replicate everywhere. A Partial input offers Replicate only:
    like torch.relu, sum first (a reduce-scatter to a Shard would give another placement)."""
    ndim = tensor_specs[0].ndim
    replicate = [([Replicate()], [Replicate()] * len(tensor_specs))]
    if any(p.is_partial() for spec in tensor_specs for p in spec.placements):
        return replicate
    shards = [([Shard(d)], [Shard(d)] * len(tensor_specs)) for d in range(ndim)]
    return shards + replicate


def _register_exact_op_sharding() -> None:
    from .backends import op_prefixes

    for prefix in op_prefixes():
        forward = getattr(torch.ops.sugar, f"{prefix}relu_forward", None)
        backward = getattr(torch.ops.sugar, f"{prefix}relu_backward", None)
        if forward is None or backward is None:
            continue

        @register_sharding(forward.default)
        def _forward_sharding(x, surrogate, alpha, region):
            return [(out, [*inp, None, None, None]) for out, inp in _pointwise_sharding(x)]

        @register_sharding(backward.default)
        def _backward_sharding(grad_y, x, surrogate, alpha, region):
            options = _pointwise_sharding(grad_y, x)
            return [(out, [*inp, None, None, None]) for out, inp in options]


if DTensor is not None:
    _register_exact_op_sharding()
