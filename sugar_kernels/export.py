"""ONNX export of SUGAR models: standard ``Relu`` nodes, no custom domain.

SUGAR changes only the backward pass, so an exported (inference) graph is a plain ReLU network.
``torch.onnx.export`` alone cannot translate the ``sugar::`` custom ops, so:

* ``export_onnx(model, args, ...)`` exports ``model`` with every ``SugarReLU`` temporarily
  replaced by ``nn.ReLU`` (the model you pass is restored afterwards, parameters are not copied)
  and with ``onnx_translation_table()`` for any functional ``sk.sugar_relu`` call left in
  ``forward``. It returns what ``torch.onnx.export`` returns (an ``ONNXProgram``; with ``f`` it
  is also written there).
* ``onnx_translation_table()`` maps the out-of-place ops (``sugar::relu_forward``,
  ``sugar::relu_forward_codes``) to ONNX ``Relu``, for callers who build their own
  ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``.

Limits: the TorchScript exporter (``dynamo=False``) is not supported; functional
``sk.sugar_relu(..., inplace=True)`` calls inside ``forward`` cannot be translated (the ONNX
exporter does not handle the functionalised in-place custom op); use ``SugarReLU`` modules there,
which ``export_onnx`` replaces. Needs the ``onnx`` and ``onnxscript`` packages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .api import SugarReLU

__all__ = ["export_onnx", "onnx_translation_table"]


def onnx_translation_table() -> dict[Callable, Callable]:
    """``{sugar op overload: onnxscript function}`` producing a standard ONNX ``Relu``.

    The code modes' second output (the packed gradient codes, training-only state) becomes an
    empty uint8 tensor; inference graphs never use it, and the exporter removes it.
    """
    from onnx import TensorProto
    from onnxscript import opset18 as op

    def relu_forward(x, surrogate: str, alpha: float, region: str):
        return op.Relu(x)

    def relu_forward_codes(x, levels, thresholds, interval_codes, search, bits: int):
        no_codes = op.Cast(op.Shape(x, start=0, end=0), to=TensorProto.UINT8)
        return op.Relu(x), no_codes

    ops = torch.ops.sugar
    return {
        ops.relu_forward.default: relu_forward,
        ops.relu_forward_codes.default: relu_forward_codes,
    }


def _plain_relu(module: SugarReLU) -> nn.ReLU:
    return nn.ReLU(inplace=module.inplace).train(module.training)


def _swap_sugar_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SugarReLU):
                setattr(parent, name, _plain_relu(child))
                swapped.append((parent, name, child))
    return swapped


def export_onnx(model: nn.Module, args: tuple = (), f=None, **export_kwargs):
    """``torch.onnx.export(model, args, f, dynamo=True, ...)`` with SUGAR exported as ``Relu``.

    ``model`` is left unchanged. Extra keyword arguments go to ``torch.onnx.export``; a
    ``custom_translation_table`` given there is merged over ``onnx_translation_table()``.
    """
    if export_kwargs.get("dynamo", True) is not True:
        raise ValueError("export_onnx supports only the dynamo exporter (dynamo=True)")
    export_kwargs.pop("dynamo", None)
    table = onnx_translation_table()
    table.update(export_kwargs.pop("custom_translation_table", None) or {})
    target = _plain_relu(model) if isinstance(model, SugarReLU) else model
    swapped = _swap_sugar_modules(target)
    try:
        return torch.onnx.export(
            target, args, f, dynamo=True, custom_translation_table=table, **export_kwargs
        )
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
