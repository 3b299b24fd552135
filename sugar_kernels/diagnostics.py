"""Dead-unit diagnostics: which activation units never fire, how sparse they are, what gradient
reaches the inactive ones.

``ActivationMonitor`` hooks every activation layer of a model (``nn.ReLU``, ``SugarReLU``,
``nn.GELU``, ``nn.SiLU``, ... and timm's own GELU/Swish classes) and accumulates, for as long as it
is attached, per layer:

* **dead units**: units (channels of a conv feature map, features of a linear layer) whose output
  was never > 0 on any element seen. "Active" means output > 0, which for every ReLU-like
  activation (ReLU, SUGAR, GELU, SiLU, ELU, leaky ReLU, Mish, ...) is the same as input > 0.
* **sparsity**: the fraction of output elements that are exactly zero, and the fraction that are
  inactive (output <= 0; for GELU/SiLU these are small negative values, not zeros).
* **gradient reaching inactive elements** (during backward): the share of the gradient's L1 mass
  w.r.t. the activation's *input* that lands on inactive elements, the fraction of inactive
  elements that receive a non-zero gradient, and the share that lands on dead units. For ReLU
  these are exactly 0; SUGAR's point is to make them non-zero.

Usage::

    with ActivationMonitor(model) as mon:      # or mon = ActivationMonitor(model).attach()
        for x, _ in loader:
            model(x)
    print(mon.summary()["total"]["dead_fraction"])

It is cheap: per forward call one comparison and one reduction over the output, per backward call
a few element-wise passes over the gradient; accumulators live on the tensors' device and are
read (synchronised) only by ``summary()``. Nothing is kept between steps except per-unit counts;
during a training step the monitor holds a reference to each activation's output until backward
(which the next layer usually saves anyway).

Notes and limits:

* The unit axis is dim 1 (N, C, ...) for conv layouts and 2-D inputs. For inputs of 3+ dims whose
  last dim is the output size of an ``nn.Linear`` in the same parent module (transformer MLPs,
  timm ConvNeXt blocks, which run channels-last), it is the last dim. Pass ``unit_dim=`` to force.
* A module called several times per forward (torchvision's BasicBlock calls ``self.relu`` twice)
  gets one entry per call position: ``layer1.0.relu`` and ``layer1.0.relu#1``. Call positions are
  counted from each call of the root model, so call the model itself, not its submodules.
* The gradient statistics use a hook on the activation's input tensor, so if that tensor also
  feeds other layers, their gradient is included. In the usual ``conv/linear -> (norm ->) act``
  chain the activation is its only consumer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .api import SugarReLU

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.RReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    SugarReLU,
)
# Activation classes of other libraries (timm, transformers), matched by class name so that those
# packages are not imported here.
DEFAULT_TYPE_NAMES = frozenset(
    {
        "GELU",
        "GELUTanh",
        "QuickGELU",
        "Swish",
        "SwishMe",
        "Mish",
        "MishMe",
        "HardSwish",
        "HardSwishMe",
        "GELUActivation",
        "NewGELUActivation",
        "SiLUActivation",
    }
)


def is_activation(module: nn.Module, types=None, type_names=None) -> bool:
    """Whether ``module`` is one of the activation layers the monitor watches by default."""
    types = DEFAULT_TYPES if types is None else tuple(types)
    names = DEFAULT_TYPE_NAMES if type_names is None else frozenset(type_names)
    return isinstance(module, types) or type(module).__name__ in names


@dataclass
class _LayerStats:
    module_type: str
    unit_dim: int
    units: int
    active: torch.Tensor  # int64 [units]: elements > 0 per unit
    zeros: torch.Tensor  # int64 scalar: elements == 0
    elements: int = 0
    forward_calls: int = 0
    grad_abs: torch.Tensor | None = None  # float64 [units]: sum |grad_x| per unit
    grad_abs_inactive: torch.Tensor | None = None  # float64 [units]: same, on inactive elements
    grad_nonzero_inactive: torch.Tensor | None = None  # int64: inactive elements with grad != 0
    grad_inactive_elements: torch.Tensor | None = None  # int64: inactive elements in backward
    backward_calls: int = 0
    backward_skipped: int = 0


@dataclass
class _Pending:
    key: str
    out: torch.Tensor | None = None
    version: int = -1


def _reduce_dims(ndim: int, unit_dim: int) -> list[int]:
    return [d for d in range(ndim) if d != unit_dim]


class ActivationMonitor:
    """Per-layer dead units, sparsity and gradient reaching inactive units (see module doc).

    Args:
        model: any ``nn.Module``.
        types: activation classes to watch (default ``DEFAULT_TYPES``, plus classes whose name is
            in ``type_names``, default ``DEFAULT_TYPE_NAMES``).
        unit_dim: ``"auto"`` (see module doc) or an int, the axis that indexes units.
        track_grad: also record gradient statistics during backward.
    """

    def __init__(
        self,
        model: nn.Module,
        types=None,
        *,
        type_names=None,
        unit_dim="auto",
        track_grad: bool = True,
    ):
        if unit_dim != "auto" and not isinstance(unit_dim, int):
            raise ValueError(f"unit_dim must be 'auto' or an int, got {unit_dim!r}")
        self.model = model
        self.types = DEFAULT_TYPES if types is None else tuple(types)
        self.type_names = DEFAULT_TYPE_NAMES if type_names is None else frozenset(type_names)
        self.unit_dim = unit_dim
        self.track_grad = track_grad
        self._handles: list = []
        self._stats: dict[str, _LayerStats] = {}
        self._calls: dict[str, int] = {}
        self._pending: dict[int, list[_Pending]] = {}
        self._parents: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ attach / detach
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def layer_modules(self) -> dict[str, nn.Module]:
        """The watched modules by qualified name (``""`` for the model itself)."""
        return {
            name: m
            for name, m in self.model.named_modules()
            if is_activation(m, self.types, self.type_names)
        }

    def attach(self) -> ActivationMonitor:
        if self.attached:
            return self
        self._parents = {}
        for pname, parent in self.model.named_modules():
            for cname, _ in parent.named_children():
                self._parents[f"{pname}.{cname}" if pname else cname] = parent
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre_hook))
        for name, module in self.layer_modules().items():
            self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._make_post_hook(name)))
        return self

    def detach(self) -> ActivationMonitor:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending = {}
        return self

    def __enter__(self) -> ActivationMonitor:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def reset(self) -> None:
        """Forget everything recorded so far (keeps the hooks attached)."""
        self._stats = {}
        self._calls = {}

    # ------------------------------------------------------------------ hooks
    def _root_pre_hook(self, module, args):
        self._calls = {}

    def _make_pre_hook(self, name: str):
        def pre_hook(module, args):
            i = self._calls.get(name, 0)
            self._calls[name] = i + 1
            key = name if i == 0 else f"{name}#{i}"
            pending = _Pending(key)
            self._pending.setdefault(id(module), []).append(pending)
            x = args[0] if args else None
            if (
                self.track_grad
                and isinstance(x, torch.Tensor)
                and x.requires_grad
                and torch.is_grad_enabled()
            ):
                # Registered before the module runs, so with inplace=True the hook still sees the
                # gradient w.r.t. the pre-activation, not w.r.t. the overwritten output.
                x.register_hook(self._make_grad_hook(pending))
            return None

        return pre_hook

    def _make_post_hook(self, name: str):
        def post_hook(module, args, output):
            stack = self._pending.get(id(module))
            pending = stack.pop() if stack else _Pending(name)
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                return None
            with torch.no_grad():
                self._record_forward(pending.key, module, name, output)
            pending.out = output
            pending.version = output._version
            return None

        return post_hook

    def _make_grad_hook(self, pending: _Pending):
        def grad_hook(grad):
            out = pending.out
            pending.out = None  # release the reference once used
            stats = self._stats.get(pending.key)
            if stats is None:
                return None
            if out is None or out._version != pending.version or out.shape != grad.shape:
                stats.backward_skipped += 1  # output changed in place later: mask unknown
                return None
            with torch.no_grad():
                self._record_backward(stats, out, grad)
            return None

        return grad_hook

    # ------------------------------------------------------------------ accumulation
    def _resolve_unit_dim(self, name: str, out: torch.Tensor) -> int:
        if out.dim() <= 1:
            return 0
        if self.unit_dim != "auto":
            d = self.unit_dim % out.dim()
            return d
        if out.dim() >= 3:
            parent = self._parents.get(name)
            if parent is not None:
                for child in parent.children():
                    if isinstance(child, nn.Linear) and child.out_features == out.shape[-1]:
                        return out.dim() - 1
        return 1

    def _record_forward(self, key: str, module: nn.Module, name: str, out: torch.Tensor):
        stats = self._stats.get(key)
        if stats is None:
            d = self._resolve_unit_dim(name, out)
            units = out.shape[d] if out.dim() >= 2 else 1
            stats = _LayerStats(
                module_type=type(module).__name__,
                unit_dim=d,
                units=units,
                active=torch.zeros(units, dtype=torch.int64, device=out.device),
                zeros=torch.zeros((), dtype=torch.int64, device=out.device),
            )
            self._stats[key] = stats
        o = out.detach()
        if o.dim() <= 1:
            pos = (o > 0).sum().reshape(1)
        else:
            if o.shape[stats.unit_dim] != stats.units:
                raise ValueError(
                    f"activation {key!r} produced {o.shape[stats.unit_dim]} units along dim "
                    f"{stats.unit_dim}, earlier calls had {stats.units}; pass unit_dim= or reset()"
                )
            pos = (o > 0).sum(dim=_reduce_dims(o.dim(), stats.unit_dim))
        stats.active += pos
        stats.zeros += (o == 0).sum()
        stats.elements += o.numel()
        stats.forward_calls += 1

    def _record_backward(self, stats: _LayerStats, out: torch.Tensor, grad: torch.Tensor):
        o = out.detach()
        inactive = o <= 0
        ga = grad.detach().abs()
        if o.dim() <= 1:
            total = ga.sum(dtype=torch.float64).reshape(1)
            on_inactive = (ga * inactive).sum(dtype=torch.float64).reshape(1)
        else:
            dims = _reduce_dims(o.dim(), stats.unit_dim)
            total = ga.sum(dim=dims, dtype=torch.float64)
            on_inactive = (ga * inactive).sum(dim=dims, dtype=torch.float64)
        nonzero = ((grad != 0) & inactive).sum()
        if stats.grad_abs is None:
            stats.grad_abs = torch.zeros_like(total)
            stats.grad_abs_inactive = torch.zeros_like(total)
            stats.grad_nonzero_inactive = torch.zeros((), dtype=torch.int64, device=o.device)
            stats.grad_inactive_elements = torch.zeros((), dtype=torch.int64, device=o.device)
        stats.grad_abs += total
        stats.grad_abs_inactive += on_inactive
        stats.grad_nonzero_inactive += nonzero
        stats.grad_inactive_elements += inactive.sum()
        stats.backward_calls += 1

    # ------------------------------------------------------------------ results
    def summary(self) -> dict:
        """Everything recorded since the last ``reset()``, as plain Python numbers.

        Returns ``{"layers": {name: {...}}, "total": {...}}``. Per layer: ``type``, ``units``,
        ``dead_units``, ``dead_fraction``, ``sparsity`` (fraction of outputs == 0),
        ``inactive_fraction`` (outputs <= 0), ``elements``, ``forward_calls`` and, when a
        backward ran, ``grad_to_inactive`` (share of the |grad_x| mass on inactive elements),
        ``grad_inactive_nonzero`` (fraction of inactive elements with grad != 0),
        ``grad_to_dead`` (share of the |grad_x| mass on dead units), ``backward_calls``; these
        are None without backward. ``total`` aggregates over layers (units and elements
        weighted).
        """
        layers = {}
        units = dead = elements = zeros = inactive = 0
        g_all = g_inactive = g_dead = 0.0
        g_nonzero = g_inactive_elems = 0
        have_grad = False
        for key, s in self._stats.items():
            dead_mask = s.active == 0
            n_dead = int(dead_mask.sum())
            n_active = int(s.active.sum())
            n_zero = int(s.zeros)
            entry = {
                "type": s.module_type,
                "units": s.units,
                "dead_units": n_dead,
                "dead_fraction": n_dead / s.units if s.units else 0.0,
                "sparsity": n_zero / s.elements if s.elements else 0.0,
                "inactive_fraction": (s.elements - n_active) / s.elements if s.elements else 0.0,
                "elements": s.elements,
                "forward_calls": s.forward_calls,
                "grad_to_inactive": None,
                "grad_inactive_nonzero": None,
                "grad_to_dead": None,
                "backward_calls": s.backward_calls,
            }
            if s.grad_abs is not None:
                have_grad = True
                tot = float(s.grad_abs.sum())
                ina = float(s.grad_abs_inactive.sum())
                dd = float(s.grad_abs[dead_mask].sum())
                nz = int(s.grad_nonzero_inactive)
                ie = int(s.grad_inactive_elements)
                entry["grad_to_inactive"] = ina / tot if tot > 0 else 0.0
                entry["grad_inactive_nonzero"] = nz / ie if ie else 0.0
                entry["grad_to_dead"] = dd / tot if tot > 0 else 0.0
                g_all, g_inactive, g_dead = g_all + tot, g_inactive + ina, g_dead + dd
                g_nonzero, g_inactive_elems = g_nonzero + nz, g_inactive_elems + ie
            if s.backward_skipped:
                entry["backward_skipped"] = s.backward_skipped
            layers[key] = entry
            units += s.units
            dead += n_dead
            elements += s.elements
            zeros += n_zero
            inactive += s.elements - n_active
        total = {
            "layers": len(layers),
            "units": units,
            "dead_units": dead,
            "dead_fraction": dead / units if units else 0.0,
            "sparsity": zeros / elements if elements else 0.0,
            "inactive_fraction": inactive / elements if elements else 0.0,
            "elements": elements,
            "grad_to_inactive": (g_inactive / g_all if g_all > 0 else 0.0) if have_grad else None,
            "grad_inactive_nonzero": (
                (g_nonzero / g_inactive_elems if g_inactive_elems else 0.0) if have_grad else None
            ),
            "grad_to_dead": (g_dead / g_all if g_all > 0 else 0.0) if have_grad else None,
        }
        return {"layers": layers, "total": total}

    def dead_fraction(self) -> float:
        """Fraction of all watched units that were never active (shortcut into ``summary()``)."""
        return self.summary()["total"]["dead_fraction"]


def monitor(model: nn.Module, **kwargs) -> ActivationMonitor:
    """``ActivationMonitor(model, **kwargs)``, for ``with monitor(model) as mon: ...``."""
    return ActivationMonitor(model, **kwargs)


__all__ = ["DEFAULT_TYPES", "DEFAULT_TYPE_NAMES", "ActivationMonitor", "is_activation", "monitor"]
