"""The backend registry: per backend, the ops that run it and why it cannot run a device's tensors.

Every backend is a family of ops ``sugar::{prefix}relu_*`` with the schemas of ``_ops.SCHEMAS``
(prefix "" for the C++/CUDA kernels, "triton_", "reference_"); code modes take ``*tables`` (a
``code_tables.CodeTables``) and ``bits``. Every caller (the API, the torch.func path, autograd
and Inductor registration, DTensor sharding rules) reads its ops from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from . import _ops, python_autograd, reference, triton_kernels  # noqa: F401  (ops)


class Backend(NamedTuple):
    name: str
    # C++/CUDA kernels: eager calls on plain tensors go straight to the same names in ``_ops._C``.
    compiled: bool
    # ``sugar::{op_prefix}relu_*`` ops that get autograd and Inductor decompositions; None: no ops.
    op_prefix: str | None
    # The ops (differentiable, except the in-place one); inside torch.func transforms the
    # Functions of python_autograd.py wrap them instead.
    forward: Callable  # (x, surrogate, alpha, region) -> relu(x)
    backward: Callable  # (grad_y, x, surrogate, alpha, region) -> grad_y * g(x)
    forward_codes: Callable  # (x, *tables, bits) -> (relu(x), codes)
    forward_codes_: Callable  # (x, *tables, bits) -> codes, x <- relu(x); no autograd
    backward_codes: Callable  # (grad_y, codes, levels, bits) -> grad_y * levels[code]
    not_supported_reasons: Callable[[str], list[str]]  # device type -> why not; [] = runs


_COMPILED_KEY = {"cpu": "CPU", "cuda": "CUDA"}
# Which compiled kernels this build registered (fixed once the extension is imported), and
# whether Triton can run each device's tensors (fixed when triton_kernels is imported).
_COMPILED = {dev: _ops.has_kernel("relu_backward", key) for dev, key in _COMPILED_KEY.items()}
_TRITON_STATUS = {dev: triton_kernels.triton_status(dev) for dev in ("cpu", "cuda")}


def _compiled_reasons(name: str) -> Callable[[str], list[str]]:
    def reasons(dev: str) -> list[str]:
        why = []
        if dev != name:
            why.append(f"the {name} kernels do not run '{dev}' tensors")
        if not _COMPILED[name]:
            built = f"the {name} kernels were not compiled into this build"
            why.append(_ops.EXTENSION_ERROR or built)
        elif name == "cuda" and not torch.cuda.is_available():
            why.append("no CUDA device is available (torch.cuda.is_available() is False)")
        return why

    return reasons


def _triton_reasons(dev: str) -> list[str]:
    ok, why = _TRITON_STATUS.get(dev, (False, f"Triton does not run tensors on '{dev}'"))
    return [] if ok else [why]


def _op_backend(name: str, prefix: str, reasons: Callable[[str], list[str]]) -> Backend:
    """A backend whose ops are ``sugar::{prefix}relu_*`` (None where they are not registered)."""
    ops = torch.ops.sugar

    def op(op_name):
        return getattr(ops, prefix + op_name, None)

    forward = op("relu_forward")
    return Backend(
        name=name,
        compiled=prefix == "",
        op_prefix=prefix if forward is not None else None,
        forward=forward,
        backward=op("relu_backward"),
        forward_codes=op("relu_forward_codes"),
        forward_codes_=op("relu_forward_codes_"),
        backward_codes=op("relu_backward_codes"),
        not_supported_reasons=reasons,
    )


REGISTRY: dict[str, Backend] = {
    "cpu": _op_backend("cpu", "", _compiled_reasons("cpu")),
    "cuda": _op_backend("cuda", "", _compiled_reasons("cuda")),
    # Without triton its ops are None, and _triton_reasons keeps it from ever being resolved.
    "triton": _op_backend("triton", "triton_", _triton_reasons),
    # Pure PyTorch (reference.py): runs every device's tensors.
    "reference": _op_backend("reference", "reference_", lambda dev: []),
}
# The order in which backend="auto" prefers them.
PREFERENCE = ("cpu", "cuda", "triton", "reference")
# Op families whose autograd is the Python rule (the C++ ops have theirs in csrc/autograd.cpp).
for _backend in REGISTRY.values():
    if _backend.op_prefix and not _backend.compiled:
        python_autograd.register_autograd(_backend.op_prefix)


def op_prefixes() -> list[str]:
    """Prefixes of the registered ``sugar::`` op families, each once."""
    return list(dict.fromkeys(b.op_prefix for b in REGISTRY.values() if b.op_prefix is not None))


def available(dev: str) -> list[str]:
    """Backends that run ``dev`` tensors, in the order ``backend="auto"`` prefers them."""
    return [name for name in PREFERENCE if not REGISTRY[name].not_supported_reasons(dev)]
