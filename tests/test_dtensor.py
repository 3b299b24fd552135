"""SUGAR on DTensor activations (tensor and sequence parallelism), in two gloo processes on the CPU.

Starting processes is slow (each imports torch), so ONE launch of two workers runs every case:
the README's "Distributed" examples, ``sugar_relu`` on each placement (eager and compiled; also
the exact op called directly on a DTensor), and a tensor + sequence parallel model in every mode
(eager, ``aot_eager``, Inductor). Each worker
also computes the single-process results the cases are compared with, and records per case
"ok" or the failure; the parametrised tests below report each case. The launch is bounded in
time: a hang fails the tests (with the case it hung in) instead of stalling the suite.

The tests at the end run in this process on a fake two-rank process group (the CUDA ones join
the GPU suite): the placements they use need no communication, so one process checks rank 0's
shard on every backend of a device.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import time
import traceback
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from helpers import assert_bitwise_equal, assert_grad_close, oracle_grad
from torch import nn

import sugar_kernels as sk

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

WORLD = 2
LAUNCH_TIMEOUT_S = 240  # the launch: ~35 s with warm compile caches, ~90 s cold, 2 busy cores
README = Path(__file__).resolve().parents[1] / "README.md"

# Every value of each option appears: exact and bits 8/4/2/1, in place and not, both regions.
MODES = {
    "exact": {"surrogate": "bsilu"},
    "b8-neg-inplace": {"surrogate": "nelu", "region": "negative", "bits": 8, "inplace": True},
    "b4": {"surrogate": "bsilu", "bits": 4},
    "b2-neg": {"surrogate": "elu", "region": "negative", "bits": 2},
    "b1-inplace": {"surrogate": "gelu", "bits": 1, "inplace": True},
    "b1-neg": {"surrogate": "mish", "region": "negative", "bits": 1},
}
# name -> (full shape, placement); shapes are uneven across 2 ranks, so shards differ in size
# and a shard's packed codes end inside a byte.
PLACEMENTS = {
    "shard0": ((5, 7), "S0"),
    "shard1": ((5, 7), "S1"),
    "replicate": ((5, 7), "R"),
    "partial": ((5, 7), "P"),
    "sequence": ((2, 5, 3), "S1"),  # (batch, seq, hidden), sharded on the sequence
}
CPU_BACKENDS = [b for b in sk.available_backends("cpu") if b != "triton"]  # no interpreter here
# "ops": the exact-mode op called directly on the DTensor (its own sharding strategy), not
# through sugar_relu's per-shard path.
OPS = ["ops"] if sk.build_info()["cpu_compiled"] else []
# Inductor is covered by the model below (every placement kind an activation meets there) and by
# the README example: each Inductor compile costs ~10 s here.
EAGER = [("eager", b) for b in CPU_BACKENDS + OPS]
COMPILED = [("aot_eager", b) for b in CPU_BACKENDS + OPS]
MODEL_STAGES = [("eager", b) for b in CPU_BACKENDS] + [("aot_eager", "cpu"), ("inductor", "cpu")]


def _inplace_partial(placement: str, mode: str) -> bool:
    return placement == "partial" and MODES[mode].get("inplace", False)


def _activation_cases(stage: str, backend: str) -> list[str]:
    return [
        f"{stage}-{backend}-{placement}-{mode}"
        for placement in PLACEMENTS
        for mode in (["exact"] if backend == "ops" else MODES)
        if stage == "eager" or not _inplace_partial(placement, mode)
    ]


def _activation(backend: str, mode: str):
    """What a case applies: sugar_relu on a backend, or ("ops") the exact op itself."""
    if backend == "ops":
        _, alpha, _ = sk.surrogates.resolve("bsilu", None, "all")
        return lambda x: torch.ops.sugar.relu_forward(x, "bsilu", alpha, "all")
    return lambda x: sk.sugar_relu(x, backend=backend, **MODES[mode])


def _readme_blocks() -> list[str]:
    """The python code blocks of README.md's "Distributed" section."""
    text = README.read_text() + "\n## "
    section = text.partition("\n## Distributed\n")[2].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


README_CASES = [f"readme-{i}" for i in range(len(_readme_blocks()))]
assert README_CASES, 'README.md has no python examples in its "## Distributed" section'

ACTIVATION_CASES = [
    case for stage, backend in EAGER + COMPILED for case in _activation_cases(stage, backend)
]
MODEL_CASES = [f"tp-model-{stage}-{backend}" for stage, backend in MODEL_STAGES]


# ---------------------------------------------------------------------------------------------
# Inputs and single-process references (computed identically in every process)
# ---------------------------------------------------------------------------------------------
def _full_input(shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g) * 3
    flat = x.view(-1)
    flat[:5] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf")])
    return x


def _grad_output(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(12))


def _single_process(shape, mode: str, backend: str, device="cpu"):
    """(y, grad_x) of one process on the full tensor: what every DTensor case must reproduce."""
    x = _full_input(shape).to(device).requires_grad_()
    y = _activation("cpu" if backend == "ops" else backend, mode)(x.clone())
    y.backward(_grad_output(shape).to(device))
    return y.detach(), x.grad


def _check_activation(got: dict, shape, mode: str, backend: str, what: str) -> None:
    """Compare one DTensor run (full tensors and placements) with the single-process run."""
    y_ref, grad_ref = _single_process(shape, mode, backend)
    assert got["y_placements"] == got["relu_placements"], (
        f"{what}: output placements {got['y_placements']}, torch.relu gives "
        f"{got['relu_placements']}"
    )
    assert got["grad_placements"] == got["relu_grad_placements"], (
        f"{what}: gradient placements {got['grad_placements']}, torch.relu gives "
        f"{got['relu_grad_placements']}"
    )
    assert_bitwise_equal(got["y"], y_ref, f"{what}: output")
    if MODES[mode].get("bits") is None:
        kw = MODES[mode]
        ref = oracle_grad(_grad_output(shape), _full_input(shape), kw["surrogate"], None,
                          kw.get("region", "all"))  # fmt: skip
        assert_grad_close(got["grad"], ref, _grad_output(shape), msg=f"{what}: exact gradient")
    else:
        assert_bitwise_equal(got["grad"], grad_ref, f"{what}: gradient")


# ---------------------------------------------------------------------------------------------
# The worker: one per rank, runs every case
# ---------------------------------------------------------------------------------------------
def _placement(code: str):
    from torch.distributed.tensor import Partial, Replicate, Shard

    return {"S0": Shard(0), "S1": Shard(1), "R": Replicate(), "P": Partial()}[code]


def _dtensor_input(mesh, name: str):
    """(leaf, DTensor input) for a placement: the leaf collects the gradient."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    shape, code = PLACEMENTS[name]
    full = _full_input(shape)
    if code == "P":  # each rank holds half; the halves sum exactly to the full tensor
        leaf = (full / WORLD).requires_grad_()
        return leaf, DTensor.from_local(leaf, mesh, [_placement(code)], run_check=False)
    leaf = distribute_tensor(full, mesh, [_placement(code)]).requires_grad_()
    return leaf, leaf


def _gather(leaf_grad, y, relu_y, relu_leaf_grad) -> dict:
    """Full tensors and placements of one run (collectives: every rank calls this)."""
    from torch.distributed.tensor import DTensor

    def placements(t):
        return [str(p) for p in t.placements] if isinstance(t, DTensor) else "local"

    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    return {
        "y": full(y).detach(),
        "grad": full(leaf_grad),
        "y_placements": placements(y),
        "relu_placements": placements(relu_y),
        "grad_placements": placements(leaf_grad),
        "relu_grad_placements": placements(relu_leaf_grad),
    }


def _torch_relu_run(mesh, name: str):
    """torch.relu on the same DTensor: the placements SUGAR must match."""
    from torch.distributed.tensor import distribute_tensor

    leaf, x = _dtensor_input(mesh, name)
    y = torch.relu(x.clone())
    y.backward(distribute_tensor(_grad_output(y.shape), mesh, y.placements))
    return y, leaf.grad


def _run_activation_cases(mesh, stage, backend, record):
    from torch.distributed.tensor import distribute_tensor

    cases = _activation_cases(stage, backend)
    specs = [case.split("-", 3)[2:] for case in cases]  # (placement, mode)

    def activations(xs):
        return [_activation(backend, mode)(x.clone()) for x, (_, mode) in zip(xs, specs)]

    if stage == "eager":
        runs = []
        for placement, mode in specs:
            leaf, x = _dtensor_input(mesh, placement)
            xin = x.clone()
            try:
                y = _activation(backend, mode)(xin)
            except RuntimeError as exc:
                runs.append((leaf, exc, xin))
                continue
            y.backward(distribute_tensor(_grad_output(y.shape), mesh, y.placements))
            runs.append((leaf, y, xin))
    else:
        torch._dynamo.reset()
        fn = torch.compile(activations, backend=stage, fullgraph=True)
        inputs = [_dtensor_input(mesh, placement) for placement, _ in specs]
        ys = fn([x for _, x in inputs])
        grads = [distribute_tensor(_grad_output(y.shape), mesh, y.placements) for y in ys]
        torch.autograd.backward(ys, grads)
        runs = [(leaf, y, None) for (leaf, _), y in zip(inputs, ys)]

    relu_runs = {name: _torch_relu_run(mesh, name) for name in PLACEMENTS}
    gathered = []
    for (placement, _), (leaf, y, _) in zip(specs, runs):
        if isinstance(y, Exception):
            gathered.append(None)
            continue
        gathered.append(_gather(leaf.grad, y, *relu_runs[placement]))

    for case, (placement, mode), (_, y, xin), got in zip(cases, specs, runs, gathered):
        with record(case):
            shape = PLACEMENTS[placement][0]
            if _inplace_partial(placement, mode):
                assert isinstance(y, RuntimeError) and "Partial" in str(y), (
                    f"expected a clear error for in place on a Partial DTensor, got {y!r}"
                )
                with pytest.raises(RuntimeError):  # torch.relu_ refuses it as well
                    torch.relu_(_dtensor_input(mesh, placement)[1].clone())
                continue
            if isinstance(y, Exception):
                raise y
            if MODES[mode].get("inplace") and xin is not None:
                assert y is xin, "inplace=True must return its input"
            _check_activation(got, shape, mode, backend, case)


# The tensor + sequence parallel model: (batch, seq, hidden) activations, every mode, and every
# placement an activation meets in such a model (hidden-sharded, sequence-sharded, replicated,
# partial). Layers are named so the plan below reads like torchtitan's.
def _model(backend: str) -> nn.Module:
    def act(mode):
        return sk.SugarReLU(backend=backend, **MODES[mode])

    torch.manual_seed(0)
    layers = [
        ("w1", nn.Linear(8, 16)),
        ("a1", nn.ReLU()),  # Shard(2): column-parallel output; sk.convert makes it exact SUGAR
        ("w2", nn.Linear(16, 8)),
        ("a2", act("b8-neg-inplace")),  # Shard(1): sequence parallel
        ("w3", nn.Linear(8, 16)),
        ("a3", act("b4")),  # Shard(2)
        ("w4", nn.Linear(16, 8)),
        ("a4", act("b2-neg")),  # Replicate
        ("w5", nn.Linear(8, 16)),
        ("a5", act("b1-inplace")),  # Shard(2)
        ("w6", nn.Linear(16, 8)),
        ("a6", act("b1-neg")),  # Partial -> Replicate
    ]
    model = nn.Sequential(OrderedDict(layers)).double()
    return sk.convert(model, **MODES["exact"], backend=backend)


def _parallelize(model, mesh):
    from torch.distributed.tensor import Partial, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    plan = {
        "w1": ColwiseParallel(use_local_output=False),
        "w2": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        "a2": SequenceParallel(),
        "w3": ColwiseParallel(input_layouts=Shard(1), use_local_output=False),
        "w4": RowwiseParallel(use_local_output=False),
        "w5": ColwiseParallel(use_local_output=False),
        "w6": RowwiseParallel(output_layouts=Partial(), use_local_output=False),
    }
    return parallelize_module(model, mesh, plan)


def _model_input():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    return x, torch.randn(2, 6, 8, generator=g, dtype=torch.float64)


def _model_grads(model, run):
    x, g = _model_input()
    x = x.requires_grad_()
    out = run(x)
    full = out.full_tensor() if hasattr(out, "full_tensor") else out
    (full * g).sum().backward()
    grads = {
        name: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        for name, p in model.named_parameters()
    }
    return full.detach(), grads, x.grad


def _run_model_case(mesh, stage, backend, record):
    with record(f"tp-model-{stage}-{backend}"):
        single = _model(backend)
        tp = _parallelize(copy.deepcopy(single), mesh)
        torch._dynamo.reset()
        run = tp if stage == "eager" else torch.compile(tp, backend=stage, fullgraph=True)
        out, grads, x_grad = _model_grads(tp, run)
        ref_out, ref_grads, ref_x_grad = _model_grads(single, single)
        # The sharded matmuls sum in another order than one process: float64 rounding only.
        tol = {"rtol": 1e-12, "atol": 1e-12}
        torch.testing.assert_close(out, ref_out, **tol, msg="model output")
        torch.testing.assert_close(x_grad, ref_x_grad, **tol, msg="input gradient")
        for name, ref in ref_grads.items():
            assert ref.abs().sum() > 0, f"{name} got no gradient"
            torch.testing.assert_close(grads[name], ref, **tol, msg=f"gradient of {name}")


def _run_readme(blocks, ports, record):
    """Each README block as a script under torchrun's environment (it initialises and destroys
    the process group itself)."""
    for i, code in enumerate(blocks):
        os.environ["MASTER_PORT"] = str(ports[i])
        with record(f"readme-{i}"):
            exec(compile(code, f"README.md:Distributed[{i}]", "exec"), {"__name__": "__main__"})


def _worker(rank, out_dir, ports):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    torch._inductor.config.compile_threads = 1  # no compile worker pool on a 2-core machine
    # One Inductor cache per rank: with uneven shards the ranks compile graphs whose local shapes
    # differ, and torch's compile caches key them on the DTensors' global shapes only, so a rank
    # would load the other rank's code (which then fails its size asserts).
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir(), f"sugar-dtensor-rank{rank}")
    os.environ.update(
        MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    results: dict[str, str] = {}
    times: dict[str, float] = {}
    log = Path(out_dir) / f"rank{rank}.json"

    class record:
        def __init__(self, case):
            self.case = case

        def __enter__(self):
            self.start = time.monotonic()
            results[self.case] = "started (did not finish)"
            log.write_text(json.dumps(results))

        def __exit__(self, exc_type, exc, tb):
            times[self.case] = round(time.monotonic() - self.start, 2)
            if exc is None:
                results[self.case] = "ok"
            else:
                lines = traceback.format_exception(exc_type, exc, tb)
                results[self.case] = "".join(lines[-12:])
            log.write_text(json.dumps(results))
            return True  # record the failure and go on with the next case

    _run_readme(_readme_blocks(), ports, record)
    os.environ["MASTER_PORT"] = str(ports[-1])
    # A case that fails on one rank only leaves the other in a collective: time it out.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=90))
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        for stage, backend in EAGER + COMPILED:
            with record(f"stage-{stage}-{backend}"):
                _run_activation_cases(mesh, stage, backend, record)
        for stage, backend in MODEL_STAGES:
            _run_model_case(mesh, stage, backend, record)
    finally:
        dist.destroy_process_group()
        (Path(out_dir) / f"times{rank}.json").write_text(json.dumps(times))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs the two workers once; per rank, {case: "ok" or the failure}."""
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("dtensor")
    ports = _free_ports(len(README_CASES) + 1)  # one per README script, one for the cases
    start = time.monotonic()
    ctx = mp.start_processes(
        _worker, args=(str(out_dir), ports), nprocs=WORLD, join=False, start_method="spawn"
    )
    failure = None
    try:
        while not ctx.join(timeout=max(1.0, LAUNCH_TIMEOUT_S - (time.monotonic() - start))):
            if time.monotonic() - start > LAUNCH_TIMEOUT_S:
                failure = f"the 2-process launch did not finish in {LAUNCH_TIMEOUT_S} s"
                break
    except Exception as exc:  # a worker died outside a case
        failure = f"a worker failed: {exc}"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    per_rank = []
    for rank in range(WORLD):
        log = out_dir / f"rank{rank}.json"
        per_rank.append(json.loads(log.read_text()) if log.exists() else {})
    print(f"\ntest_dtensor: the 2-process launch took {time.monotonic() - start:.1f} s")
    return failure, per_rank


def _assert_case(results, case):
    failure, per_rank = results
    for rank, got in enumerate(per_rank):
        status = got.get(case)
        if status is None:
            pytest.fail(f"rank {rank} never reached {case}: {failure or 'no record'}")
        assert status == "ok", f"rank {rank}, {case}:\n{status}"


@pytest.mark.parametrize("case", README_CASES)
def test_readme_distributed_examples_run(results, case):
    _assert_case(results, case)


@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_activation_matches_single_process(results, case):
    stage, backend = case.split("-")[:2]
    _assert_case(results, f"stage-{stage}-{backend}")
    _assert_case(results, case)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_tensor_sequence_parallel_model_matches_single_process(results, case):
    _assert_case(results, case)


# ---------------------------------------------------------------------------------------------
# One process, a fake 2-rank process group: rank 0's shard on every backend of a device
# ---------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available")
LOCAL_PLACEMENTS = ["shard0", "shard1", "replicate", "sequence"]  # no communication needed


@pytest.fixture
def fake_mesh():
    """Rank 0 of a 2-rank group whose collectives do nothing; destroyed after the test."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("fake", store=fake_pg.FakeStore(), rank=0, world_size=WORLD)
    try:
        yield lambda device: init_device_mesh(device, (WORLD,))
    finally:
        dist.destroy_process_group()


def _rank0_part(full: torch.Tensor, placement: str) -> torch.Tensor:
    _, code = PLACEMENTS[placement]
    if code == "R":
        return full
    return full.chunk(WORLD, dim=1 if code == "S1" else 0)[0]  # Shard's split: torch.chunk


def _local_shard_cases(mesh, device, backend, compiled):
    from torch.distributed.tensor import DTensor

    specs = [(p, m) for p in LOCAL_PLACEMENTS for m in MODES]

    def activations(xs):
        return [
            sk.sugar_relu(x.clone(), backend=backend, **MODES[mode])
            for x, (_, mode) in zip(xs, specs)
        ]

    def dtensor(full, placement):
        part = _rank0_part(full, placement).contiguous()
        pl = [_placement(PLACEMENTS[placement][1])]
        return DTensor.from_local(part, mesh, pl, shape=full.shape, stride=full.stride())

    fn = torch.compile(activations, fullgraph=True) if compiled else activations
    leaves = [
        _full_input(PLACEMENTS[p][0]).to(device).requires_grad_() for p, _ in specs
    ]  # fmt: skip
    ys = fn([dtensor(leaf, p) for leaf, (p, _) in zip(leaves, specs)])
    grads = [dtensor(_grad_output(y.shape).to(device), p) for y, (p, _) in zip(ys, specs)]
    torch.autograd.backward(ys, grads)
    for leaf, y, (placement, mode) in zip(leaves, ys, specs):
        what = f"{device} {backend} {placement} {mode}"
        shape = PLACEMENTS[placement][0]
        y_ref, grad_ref = _single_process(shape, mode, backend, device)
        assert [str(p) for p in y.placements] == [str(_placement(PLACEMENTS[placement][1]))]
        assert_bitwise_equal(y.to_local(), _rank0_part(y_ref, placement), f"{what}: output")
        grad = _rank0_part(leaf.grad, placement)  # the other rank's part got no gradient here
        if MODES[mode].get("bits") is None and compiled:  # Inductor's own exact formula
            kw = MODES[mode]
            ref = oracle_grad(_grad_output(shape), _full_input(shape), kw["surrogate"], None,
                              kw.get("region", "all"))  # fmt: skip
            assert_grad_close(grad, _rank0_part(ref, placement), _rank0_part(
                _grad_output(shape), placement), msg=f"{what}: exact gradient")  # fmt: skip
        else:
            assert_bitwise_equal(grad, _rank0_part(grad_ref, placement), f"{what}: gradient")


@pytest.mark.parametrize("backend", sk.available_backends("cpu"))
def test_local_shards_cpu_fake_group(fake_mesh, backend):
    _local_shard_cases(fake_mesh("cpu"), "cpu", backend, compiled=False)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("backend", [b for b in sk.available_backends("cuda") if b != "reference"])
def test_local_shards_cuda_fake_group(fake_mesh, backend, compiled):
    _local_shard_cases(fake_mesh("cuda"), "cuda", backend, compiled)
