"""SUGAR in the combinations users build, each compared with the same model run eagerly.

Features tested one at a time pass while their combinations give wrong gradients (an in-place code
mode behind a graph break was straight-through under torch.compile), so this file crosses modes
with ways of running a model. The product is sampled to fit CI: one model holds every in-place
code mode (so every in-place mode meets every way), plus exact mode and one out-of-place code mode
that rotates through the ways (so every mode appears); BatchNorm and residual neighbours sit
around the activations; each compile mode (auto/fused/opaque) runs several ways.

float64 makes compiled and eager arithmetic agree to ~1e-15, so a code never flips at a threshold
and any gradient difference above 1e-9 is a real one (a wrong gradient shows as 0.1-1).
"""

from __future__ import annotations

import contextlib
import os
import time
from functools import partial

import pytest
import torch
from helpers import DEVICES
from torch import nn
from torch.utils.checkpoint import checkpoint

import sugar_kernels as sk

D = 24
BATCH = 8
INPLACE_MODES = {
    "bits8-inplace": {"surrogate": "bsilu", "bits": 8, "inplace": True},
    "bits4-inplace": {"surrogate": "gelu", "bits": 4, "inplace": True},
    "bits2-inplace-negative": {
        "surrogate": "silu",
        "region": "negative",
        "bits": 2,
        "inplace": True,
    },
    "bits1-inplace-negative": {
        "surrogate": "nelu",
        "region": "negative",
        "bits": 1,
        "inplace": True,
    },
}
OUT_OF_PLACE_MODES = {
    "bits8": {"surrogate": "mish", "region": "negative", "bits": 8},
    "bits4": {"surrogate": "elu", "bits": 4},
    "bits2": {"surrogate": "bsilu", "bits": 2},
    "bits1": {"surrogate": "gelu", "bits": 1},
}
EXACT = {"surrogate": "bsilu"}


class Act(nn.Module):
    """A SugarReLU with an optional graph break just before or just after it."""

    def __init__(self, brk: str | None, **kwargs):
        super().__init__()
        self.act, self.brk = sk.SugarReLU(**kwargs), brk

    def forward(self, h):
        if self.brk == "before":
            torch._dynamo.graph_break()
        h = self.act(h)
        if self.brk == "after":
            torch._dynamo.graph_break()
        return h


class Block(nn.Module):
    """Linear -> [BatchNorm over the flattened rows] -> activation -> [+ residual], on
    (batch, width) or (batch, sequence, width) inputs."""

    def __init__(self, act: nn.Module, bn: bool, residual: bool, width: int):
        super().__init__()
        self.linear, self.act, self.residual = nn.Linear(width, width), act, residual
        self.bn = nn.BatchNorm1d(width) if bn else None

    def forward(self, x):
        h = self.linear(x)
        if self.bn is not None:
            h = self.bn(h.reshape(-1, h.shape[-1])).view_as(h)
        h = self.act(h)
        return x + h if self.residual else h


class Zoo(nn.Module):
    def __init__(self, modes: list[dict], brk=None, bn=True, ckpt=None, width=D, backend="auto"):
        super().__init__()
        self.inp, self.out, self.ckpt = nn.Linear(12, width), nn.Linear(width, 3), ckpt
        self.blocks = nn.ModuleList(
            Block(
                Act(brk, backend=backend, **m),
                bn=bn and i % 2 == 0,
                residual=i % 3 == 1,
                width=width,
            )
            for i, m in enumerate(modes)
        )

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            if self.ckpt is None:
                x = block(x)
            else:  # checkpoint needs an input that requires grad for the reentrant kind
                x = checkpoint(block, x, use_reentrant=self.ckpt == "reentrant")
        return self.out(x)


def _modes(extra: str) -> list[dict]:
    return [EXACT, *INPLACE_MODES.values(), OUT_OF_PLACE_MODES[extra]]


def _init(model: nn.Module, dtype=torch.float64) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return model.to(dtype)


def _data(n=BATCH, dtype=torch.float64, seed=1, seq=None, device="cpu"):
    shape = (n, 12) if seq is None else (n, seq, 12)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2
    return x.to(device)


def _run(model, x):
    """Output and the gradients of every parameter and of the input."""
    model.zero_grad(set_to_none=True)
    xl = x.detach().clone().requires_grad_()
    out = model(xl)
    out.square().mean().backward()
    return [out.detach()] + [p.grad for p in model.parameters()] + [xl.grad]


def _rel_err(got, want) -> float:
    """Largest absolute difference over all tensors, relative to the largest entry of ``want``.

    Not per tensor: the bias of a Linear that feeds BatchNorm has a gradient that is 0 up to
    rounding, whose relative error is noise.
    """
    diff = max((a.double() - b.double()).abs().max().item() for a, b in zip(got, want))
    return diff / max(b.double().abs().max().item() for b in want)


# way -> (compile mode, what the model needs, how to run it). Each in-place mode meets each way;
# the out-of-place code mode rotates with the ways (every value of every axis appears).
WAYS = {
    "compile": ("auto", {}, "inductor"),
    "compile-fullgraph": ("fused", {}, "fullgraph"),
    "compile-dynamic": ("opaque", {}, "dynamic"),
    "break-before": ("auto", {"brk": "before"}, "inductor"),
    "break-before-fused": ("fused", {"brk": "before"}, "inductor"),
    "break-before-opaque": ("opaque", {"brk": "before"}, "inductor"),
    "break-after": ("fused", {"brk": "after"}, "inductor"),
    "aot_eager-break-before": ("auto", {"brk": "before"}, "aot_eager"),
    "aot_eager": ("auto", {}, "aot_eager"),
    "checkpoint": ("auto", {"ckpt": "non-reentrant"}, "eager"),
    "checkpoint-reentrant": ("auto", {"ckpt": "reentrant"}, "eager"),
    "checkpoint-compiled": ("fused", {"ckpt": "non-reentrant"}, "inductor"),
    "autocast-compile": ("auto", {}, "autocast"),
    "export-compile": ("fused", {}, "export"),
    "export-compile-opaque": ("opaque", {}, "export"),
}
_EXTRA = dict(zip(WAYS, list(OUT_OF_PLACE_MODES) * 4))
# (batch, sequence, width) activations for every other way, (batch, width) for the rest: a
# Linear's output reaches the activation directly or through views.
_SEQ = {way: 3 if i % 2 == 0 else None for i, way in enumerate(WAYS)}
# The backend that runs the activations, per device, in rotation over the ways (the compiled
# kernel under "auto"; Triton on GPUs; the reference on the CPU, whose in-place form is an
# autograd.Function). Triton on the CPU runs only under its interpreter, which cannot compile.
_BACKENDS = {"cpu": ("auto", "auto", "reference"), "cuda": ("auto", "triton")}


def _backend(way: str, device: str) -> str:
    rotation = _BACKENDS[device]
    return rotation[list(WAYS).index(way) % len(rotation)]


@contextlib.contextmanager
def _fresh(mode):
    torch._dynamo.reset()
    with sk.compile_mode(mode):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("way", WAYS)
def test_way_matches_eager(way, device):
    mode, build, run = WAYS[way]
    backend = _backend(way, device)
    model = _init(Zoo(_modes(_EXTRA[way]), backend=backend, **build))
    dtype = torch.float32 if run == "autocast" else torch.float64
    model = model.to(device, dtype)
    xs = [_data(dtype=dtype, seq=_SEQ[way], device=device)]
    if run == "dynamic":
        xs.append(_data(n=5, dtype=dtype, seed=2, seq=_SEQ[way], device=device))
    with _fresh(mode):
        if run == "autocast":
            autocast = partial(torch.autocast, device, dtype=torch.bfloat16)
            with autocast():
                want = [_run(model, x) for x in xs]
            compiled = torch.compile(model)
            # Inductor keeps fused intermediates in float32 unless told to round as eager does
            # (bf16 rounding differences would flip codes and hide nothing but noise).
            with autocast(), torch._inductor.config.patch(emulate_precision_casts=True):
                got = [_run(compiled, x) for x in xs]
        else:
            want = [_run(model, x) for x in xs]
            if run == "eager":
                runner = model
            elif run == "export":
                runner = torch.compile(torch.export.export(model, (xs[0],)).module())
            else:
                runner = torch.compile(
                    model,
                    backend="aot_eager" if run == "aot_eager" else "inductor",
                    fullgraph=run == "fullgraph",
                    dynamic=True if run == "dynamic" else None,
                )
            got = [_run(runner, x) for x in xs]
    tol = 1e-2 if run == "autocast" else 1e-9
    for i, (g, w) in enumerate(zip(got, want)):
        err = _rel_err(g, w)
        assert err <= tol, f"{way} ({device}, {backend}, compile mode {mode}), input {i}: {err}"


def test_compile_under_no_grad_and_inference_matches_eager():
    """Inference-only compiled graphs (no autograd recorded) still write relu(x) into x."""
    model = _init(Zoo(_modes("bits8"))).eval()
    x = _data()
    with torch.no_grad():
        want = model(x)
    with _fresh("fused"), torch.no_grad():
        got = torch.compile(model)(x)
    assert _rel_err([got], [want]) <= 1e-12


def test_compiled_inplace_on_a_leaf_raises_like_eager():
    leaf = torch.randn(8, dtype=torch.float64, requires_grad=True)
    with _fresh("auto"):
        compiled = torch.compile(lambda t: sk.sugar_relu(t, bits=8, inplace=True))
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            compiled(leaf)


def test_export_keeps_one_inplace_op():
    """torch.export shows the in-place activation as one sugar op (not functional + copy_)."""
    act = Zoo([INPLACE_MODES["bits8-inplace"]], bn=False)
    graph = str(torch.export.export(_init(act), (_data(),)).graph)
    assert graph.count("sugar.relu_forward_codes_.default") == 1, graph
    assert "sugar.relu_forward_codes.default" not in graph, graph


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_exported_program_trains_like_eager(backend):
    """The module of a torch.export'ed program, run eagerly (no compile), keeps every mode's
    surrogate gradient: each backend's ops reach the program with their autograd."""
    model = _init(Zoo(_modes("bits8"), backend=backend))
    x = _data(seq=3)
    exported = torch.export.export(model, (x,)).module()
    results = []
    for module in (model, exported):
        out_and_input_grad = _run(module, x)
        grads = dict(module.named_parameters())  # same names, maybe another order
        results.append([*out_and_input_grad[:1], out_and_input_grad[-1]])
        results[-1] += [grads[name].grad for name in sorted(grads)]
    assert _rel_err(results[1], results[0]) <= 1e-12


# ---------------------------------------------------------------------------------------------
# FSDP2 and DDP: two gloo processes, one launch for every case
# ---------------------------------------------------------------------------------------------
DIST_WAYS = ("fsdp2", "fsdp2-compiled", "ddp-compiled")
DIST_TIMEOUT_S = 240
DIST_WIDTH = 512


def _dist_model(brk=None):
    """Linear -> activation pairs on (batch, 512) float64, every mode: each 2 MB weight fills a
    1 MB DDP bucket (the smallest DDP's compiled optimizer accepts) by itself, so the compiled
    graph is split after every Linear and activations become inputs of compiled regions. No
    BatchNorm: per-rank batch statistics would differ from the single-process run's. Every
    other activation runs the reference backend (ops whose autograd is the Python rule, as
    Triton's on GPUs), the rest "auto"."""
    blocks = [
        nn.Sequential(
            nn.Linear(DIST_WIDTH, DIST_WIDTH),
            Act(brk, backend="reference" if i % 2 else "auto", **m),
        )
        for i, m in enumerate(_modes("bits4"))
    ]
    return _init(nn.Sequential(nn.Linear(12, DIST_WIDTH), *blocks, nn.Linear(DIST_WIDTH, 1)))


def _dist_data():
    return _data()


def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = _dist_data().chunk(world)[rank]
        mesh = init_device_mesh("cpu", (world,))
        for way in DIST_WAYS:
            torch._dynamo.reset()
            model = _dist_model()
            if way.startswith("fsdp2"):
                for block in model[1:-1]:  # each Linear -> activation pair one FSDP unit
                    fully_shard(block, mesh=mesh)
                fully_shard(model, mesh=mesh)
                runner = torch.compile(model) if way == "fsdp2-compiled" else model
            else:
                # DDP's optimizer splits the compiled graph at every bucket, so activations
                # become inputs of compiled regions.
                runner = torch.compile(DDP(model, bucket_cap_mb=1))
            out = runner(x.clone().requires_grad_())
            # Both average gradients over ranks: the mean of the local means is the global mean.
            out.square().mean().backward()
            grads = [
                getattr(p.grad, "full_tensor", lambda g=p.grad: g)() for p in model.parameters()
            ]
            if rank == 0:
                torch.save(grads, os.path.join(out_dir, f"{way}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dist_grads(tmp_path_factory):
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(
        _dist_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=False
    )
    deadline = time.monotonic() + DIST_TIMEOUT_S
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed workers still running after {DIST_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return {way: torch.load(out / f"{way}.pt") for way in DIST_WAYS}


@pytest.mark.parametrize("way", DIST_WAYS)
def test_distributed_matches_single_process_eager(dist_grads, way):
    model = _dist_model()
    want = _run(model, _dist_data())[1:-1]  # parameter gradients
    got = dist_grads[way]
    # FSDP2 reduce-scatters in another order than one process sums: float64 rounding only.
    assert _rel_err(got, want) <= 1e-9, f"{way}: {_rel_err(got, want)}"
