"""Triton kernels for SUGAR (ReLU forward, surrogate-gradient backward).

Importing this package registers ``sugar::triton_relu_forward`` and ``sugar::triton_relu_backward``
and the code-mode ops ``sugar::triton_relu_forward_codes``, ``sugar::triton_relu_forward_codes_``
and ``sugar::triton_relu_backward_codes`` (through ``torch.library.triton_op``) when Triton is
importable. It never fails when Triton is missing: ``triton_status(device_type)`` then says so,
and ``sugar_relu_triton`` raises.

``TRITON_INTERPRET=1`` must be set before this package is imported for the kernels to run on CPU
tensors (Triton decides at decoration time whether a kernel is compiled or interpreted).
"""

from __future__ import annotations

import torch

try:
    from . import code_modes as _code_modes  # noqa: F401  (registers the code-mode ops)
    from . import exact as _impl

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # triton missing (or too old for this package)
    _impl = _code_modes = None
    IMPORT_ERROR = f"triton is not importable ({exc})"

__all__ = ["IMPORT_ERROR", "sugar_relu_triton", "triton_status"]


def triton_status(device_type: str) -> tuple[bool, str]:
    """Whether the Triton kernels can run tensors of ``device_type`` here, and if not, why."""
    if _impl is None:
        return False, IMPORT_ERROR
    if device_type == "cuda":
        if _impl.INTERPRET:
            return False, (
                "TRITON_INTERPRET=1 was set when triton_kernels was imported: the kernels are "
                "interpreted and run CPU tensors only"
            )
        if not torch.cuda.is_available():
            return False, "no CUDA device is available (torch.cuda.is_available() is False)"
        return True, "Triton kernels compiled for CUDA"
    if device_type == "cpu":
        if _impl.INTERPRET:
            return True, "Triton interpreter (TRITON_INTERPRET=1), slow: for testing"
        return False, (
            "Triton runs CPU tensors only in interpreter mode: set TRITON_INTERPRET=1 before "
            "triton_kernels is imported"
        )
    return False, f"Triton runs on CUDA devices (or on CPU when interpreting), not {device_type!r}"


def sugar_relu_triton(x: torch.Tensor, surrogate: str, alpha: float, region: str) -> torch.Tensor:
    """relu(x) forward, ``grad_y * g(x)`` backward, through the Triton ops.

    Arguments are validated by the caller (``sugar_kernels.sugar_relu``), alpha already filled in.
    """
    if _impl is None:
        raise RuntimeError(f"backend 'triton' is not available: {IMPORT_ERROR}")
    return _impl.sugar_relu_triton(x, surrogate, alpha, region)
