"""Public API: sugar_relu, SugarReLU, convert, strip, available_backends, build_info."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import has_torch_function_unary

from . import _ops, distributed, inductor, python_autograd
from .backends import REGISTRY, Backend, available
from .code_tables import check_bits, kernel_tables
from .python_autograd import InplaceCodes
from .surrogates import resolve

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
inductor.install()  # Inductor decomposes sugar ops per the compile mode (default "auto")


def _device_type(device) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def available_backends(device="cpu") -> list[str]:
    """Backends that can run tensors on ``device``, in the order ``backend="auto"`` prefers them.

    ``"auto"`` takes the first entry: the compiled C++/CUDA kernel for the device when it is
    built, else Triton where it can run (CUDA, or CPU under ``TRITON_INTERPRET=1``), else the
    pure-PyTorch reference. The list shows what a fallback would be: nothing falls back silently.
    """
    return available(_device_type(device))


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sugar_relu expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"sugar_relu supports float32, float64, float16 and bfloat16 tensors, got {x.dtype}"
        )
    if x.is_nested or x.layout != torch.strided:
        # The surrogate gradient is non-zero at 0, so the implicit zeros of a sparse tensor would
        # need gradients too; for a nested tensor apply it to the values (x.values()).
        kind = "a nested tensor" if x.is_nested else f"layout {x.layout}"
        raise TypeError(f"sugar_relu supports dense (torch.strided) tensors, got {kind}")


def _resolve_backend_uncached(backend: str, dev: str) -> Backend:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "auto":
        return REGISTRY[available(dev)[0]]
    entry = REGISTRY[backend]
    if entry.compiled and backend != dev:
        raise ValueError(f"backend {backend!r} cannot run a tensor on device '{dev}'")
    reasons = entry.not_supported_reasons(dev)
    if reasons:
        why = "; ".join(reasons)
        raise RuntimeError(f"backend {backend!r} is not available for '{dev}' tensors: {why}")
    return entry


# (backend, device type) -> the registry entry that runs it; only successes are kept, and only in
# eager mode (under Dynamo a global dict read would add guards on its contents).
_RESOLVED: dict[tuple[str, str], Backend] = {}


def _resolve_backend(backend: str, dev: str) -> Backend:
    if torch.compiler.is_compiling():
        return _resolve_backend_uncached(backend, dev)
    resolved = _RESOLVED.get((backend, dev))
    if resolved is None:
        resolved = _RESOLVED[backend, dev] = _resolve_backend_uncached(backend, dev)
    return resolved


def sugar_relu(
    x: torch.Tensor,
    surrogate: str = "bsilu",
    *,
    alpha: float | None = None,
    region: str = "all",
    bits: int | None = None,
    inplace: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """ReLU forward, surrogate-gradient backward (SUGAR).

    Returns ``relu(x)``, bit-identical to ``torch.relu``. Backward computes ``grad_y * g(x)``
    with g = s' of the chosen surrogate everywhere (``region="all"``) or only for x <= 0
    (``region="negative"``, g = 1 for x > 0).
    """
    # The tables are looked up by the alpha as given (None = the default): under
    # torch.compile(dynamic=True) a resolved default would be a symbolic float, not a cache key.
    table_alpha = alpha
    surrogate, alpha, region = resolve(surrogate, alpha, region)
    return _sugar_relu(x, surrogate, alpha, table_alpha, region, bits, inplace, backend)


def _sugar_relu(x, surrogate, alpha, table_alpha, region, bits, inplace, backend):
    """sugar_relu with (surrogate, alpha, region) already resolved (SugarReLU does that once)."""
    if bits is not None:
        bits = check_bits(bits)
    elif inplace:
        raise ValueError("inplace=True needs a code mode (bits=8/4/2/1): exact mode keeps x")
    _check_input(x)
    if distributed.is_dtensor(x):
        # Tensor/sequence parallel: each rank runs the plain-tensor path on its local shard.
        def local(shard):
            return _sugar_relu(shard, surrogate, alpha, table_alpha, region, bits, False, backend)

        return distributed.sugar_relu_dtensor(x, local, inplace)
    dev = "cpu" if x.is_cpu else x.device.type
    backend = _resolve_backend(backend, dev)
    # Read while Dynamo traces, so compiled code guards on the compile mode: switching it
    # (set_compile_mode) recompiles instead of reusing code made for the other mode.
    inductor.traced_for_fusion(bits is not None, dev)
    # Eager calls of the compiled ops on plain tensors enter the dispatcher from C++ (same path,
    # without torch.ops' generic argument parsing); traced calls and __torch_function__ subclasses
    # or modes go through torch.ops.
    eager = not torch.compiler.is_compiling()
    direct = backend.compiled and eager and not has_torch_function_unary(x)
    if eager and python_autograd.transformed(x):
        # torch.func (grad, vjp, jacrev, vmap): the same ops with functorch-aware autograd.
        if bits is None:
            return python_autograd.sugar_relu(x, surrogate, alpha, region, backend)
        tables = kernel_tables(surrogate, table_alpha, region, bits, x.device, x.dtype)
        return python_autograd.sugar_relu_codes(x, tables, bits, inplace, backend)
    if bits is None:
        if direct:
            return _ops._C.relu_forward(x, surrogate, alpha, region)
        return backend.forward(x, surrogate, alpha, region)

    tables = kernel_tables(surrogate, table_alpha, region, bits, x.device, x.dtype)
    # Under torch.compile an in-place call is traced as the functional op plus a copy into x,
    # never as the mutating op. A hand-written autograd of a mutating op runs with grad mode off,
    # and when x is an input of the compiled region (a graph break before the activation, FSDP,
    # DDP's bucketed graphs) AOTAutograd keeps that mutation hidden from autograd: the traced
    # backward would be the identity. Inductor still writes y into x's buffer, and the
    # partitioner saves the codes, not x or y. torch.export keeps the compiled backends' one
    # in-place op; the others' Function (InplaceCodes) cannot mark a traced view dirty there.
    if inplace and not eager and (not backend.compiled or not inductor.is_exporting()):
        return x.copy_(backend.forward_codes(x, *tables, bits)[0])
    if not inplace:
        forward = _ops._C.relu_forward_codes if direct else backend.forward_codes
        return forward(x, *tables, bits)[0]
    if backend.compiled:  # the op's autograd (C++) marks x modified
        (_ops._C.relu_forward_codes_ if direct else backend.forward_codes_)(x, *tables, bits)
        return x
    return InplaceCodes.apply(x, *tables, bits, backend.forward_codes_, backend.backward_codes)[0]


class SugarReLU(nn.Module):
    """Drop-in replacement for ``nn.ReLU``: same forward, surrogate gradient in backward."""

    def __init__(
        self,
        surrogate: str = "bsilu",
        *,
        alpha: float | None = None,
        region: str = "all",
        bits: int | None = None,
        inplace: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.surrogate, alpha, self.region = resolve(surrogate, alpha, region)
        self.alpha = alpha if _surrogate_has_alpha(self.surrogate) else None
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
        if bits is not None:
            bits = check_bits(bits)
        elif inplace:
            raise ValueError("inplace=True needs a code mode (bits=8/4/2/1): exact mode keeps x")
        self.bits, self.inplace, self.backend = bits, inplace, backend

    # alpha is kept as a float.hex() string: a float attribute would become a symbolic input
    # under torch.compile(dynamic=True), a string stays a constant.
    @property
    def alpha(self) -> float | None:
        return None if self._alpha_hex is None else float.fromhex(self._alpha_hex)

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        if value is not None:
            _, value, _ = resolve(self.surrogate, value, "all")
        self._alpha_hex = None if value is None else float(value).hex()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # surrogate, alpha and region were resolved in __init__ / the alpha setter (and the ops
        # check them again); alpha is None only for surrogates without one.
        alpha = self.alpha
        return _sugar_relu(
            x,
            self.surrogate,
            0.0 if alpha is None else alpha,
            alpha,
            self.region,
            self.bits,
            self.inplace,
            self.backend,
        )

    def __prepare_scriptable__(self):
        # torch.jit.script's hook: its own error points inside the alpha property.
        raise RuntimeError(
            "SugarReLU cannot be compiled by TorchScript (torch.jit.script): use torch.compile "
            "or torch.export (torch.jit.trace also works), or script sk.strip(model), an "
            "inference copy with nn.ReLU (same forward, no surrogate gradient)"
        )

    def extra_repr(self) -> str:
        parts = [f"surrogate={self.surrogate!r}"]
        if _surrogate_has_alpha(self.surrogate):
            parts.append(f"alpha={self.alpha}")
        if self.region != "all":
            parts.append(f"region={self.region!r}")
        if self.bits is not None:
            parts.append(f"bits={self.bits}")
        if self.inplace:
            parts.append("inplace=True")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)


def _surrogate_has_alpha(name: str) -> bool:
    from .surrogates import SURROGATES

    return SURROGATES[name].has_alpha


def convert(
    model: nn.Module, surrogate: str = "bsilu", *, replace=(nn.ReLU,), **kwargs
) -> nn.Module:
    """Replace every module of a type in ``replace`` by ``SugarReLU(surrogate, **kwargs)``.

    Works in place on ``model`` and returns it (a bare activation module comes back replaced).
    ``inplace`` is taken from the replaced module (``nn.ReLU(inplace=True)``) only when a code
    mode (``bits``) is given, since exact mode must keep its input; pass ``inplace=`` to override.
    """
    replace = tuple(replace)
    SugarReLU(surrogate, **kwargs)  # validate the arguments once, before touching the model

    def replacement(child: nn.Module) -> SugarReLU:
        args = dict(kwargs)
        if "inplace" not in args and args.get("bits") is not None:
            args["inplace"] = bool(getattr(child, "inplace", False))
        return SugarReLU(surrogate, **args)

    if isinstance(model, replace) and not isinstance(model, SugarReLU):
        return replacement(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, replace) and not isinstance(child, SugarReLU):
                setattr(parent, name, replacement(child))
    return model


def strip(model: nn.Module) -> nn.Module:
    """Replace every ``SugarReLU`` by ``nn.ReLU`` (same forward) for deployment/export."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SugarReLU):
                setattr(parent, name, nn.ReLU(inplace=child.inplace).train(child.training))
    if isinstance(model, SugarReLU):
        return nn.ReLU(inplace=model.inplace).train(model.training)
    return model


def build_info() -> dict:
    """What this installation was built with and which kernels it has."""
    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension": _ops._C is not None,
        "extension_error": _ops.EXTENSION_ERROR,
        "cpu_compiled": _ops.has_kernel("relu_backward", "CPU"),
        "cuda_compiled": _ops.has_kernel("relu_backward", "CUDA"),
        "cuda_archs": [],
        "cuda_available": torch.cuda.is_available(),
        "triton": None,
    }
    if _ops._C is not None:
        compiled = _ops._C.build_info()
        archs = compiled.pop("cuda_archs_str")
        info["cuda_archs"] = [a for a in archs.replace(",", ";").split(";") if a]
        info["cpu_capability"] = compiled["cpu_capability"]  # built: "AVX2+AVX512", ...
        info["cpu_dispatch"] = compiled["cpu_dispatch"]  # run on this CPU: "AVX512", ...
        info["built_with_torch"] = compiled["built_with_torch"]
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info
