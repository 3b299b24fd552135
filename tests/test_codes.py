"""Code modes (bits=8/4/2/1) and in-place forward: codes, gradients, errors, memory."""

import math

import pytest
import torch
from torch import nn

import sugar_kernels as sk
from sugar_kernels import code_tables as C

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
CONFIGS = [
    ("bsilu", "all"),
    ("bsilu", "negative"),
    ("gelu", "all"),
    ("nelu", "negative"),
    ("leaky_relu", "all"),
    ("mish", "negative"),
]
COMPILED = sk.build_info()["cpu_compiled"]
needs_cpu_kernels = pytest.mark.skipif(not COMPILED, reason="C++ CPU kernels not built")
CODE_OPS = ("relu_forward_codes", "relu_forward_codes_", "relu_backward_codes")


def _alpha(name):
    return sk.SURROGATES[name].alpha or 0.0


def _special_input(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 2).to(dtype)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    x[: len(specials)] = specials.to(dtype)
    return x


def _backends():
    return [b for b in sk.available_backends("cpu") if b != "triton"]


# ---- the quantiser itself ------------------------------------------------------------------------
@pytest.mark.parametrize("bits,bound", [(8, 0.005), (4, 0.04), (2, 0.12), (1, 0.25)])
def test_bsilu_error_targets_on_normal_inputs(bits, bound):
    """Measured on fresh N(0,1) samples through the real op, not only the table's estimate."""
    x = torch.randn(1 << 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    sk.sugar_relu(x, "bsilu", bits=bits).backward(torch.ones_like(x))
    exact = sk.grad_factor(x.detach(), "bsilu", 1.67, "all")
    err = ((x.grad - exact).norm() / exact.norm()).item()
    assert err <= bound
    assert math.isclose(err, C.quantizer("bsilu", None, "all", bits).rel_l2_error, rel_tol=0.05)


@pytest.mark.parametrize("name,region", CONFIGS)
@pytest.mark.parametrize("bits", C.BITS)
def test_levels_table_shape_and_negative_region(name, region, bits):
    q = C.quantizer(name, None, region, bits)
    assert len(q.levels) == 2**bits and list(q.levels) == sorted(q.levels)
    assert list(q.thresholds) == sorted(q.thresholds)
    assert len(q.interval_codes) == len(q.thresholds) + 1 <= C.MAX_INTERVALS
    assert all(0 <= c < 2**bits for c in q.interval_codes)
    if region == "negative":  # x > 0 gets the level exactly 1.0: gradient passes unchanged
        assert 1.0 in q.levels
        assert q.levels[q.interval_codes[-1]] == 1.0
        assert not q.thresholds or q.thresholds[-1] <= 0.0
    torch.testing.assert_close(
        sk.levels(name, region=region, bits=bits), torch.tensor(q.levels, dtype=torch.float64)
    )


def test_levels_are_near_lloyd_max_optimal():
    """Perturbing any level of the 2-bit table must not lower the expected error."""
    q = C.quantizer("bsilu", None, "all", 2)
    x = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    w = torch.exp(-0.5 * x * x)
    g = sk.grad_factor(x, "bsilu", 1.67, "all")

    def mse(levels):
        lv = torch.tensor(levels, dtype=torch.float64)
        return (w * (g[:, None] - lv[None, :]).abs().min(dim=1).values ** 2).sum().item()

    best = mse(q.levels)
    for i in range(4):
        for d in (-0.01, 0.01):
            moved = list(q.levels)
            moved[i] += d
            assert mse(moved) >= best * (1 - 1e-9)


def test_one_bit_negative_region_is_mask_saving():
    """bits=1, region="negative": a 1-bit x>0 mask and one constant gradient for x <= 0."""
    q = C.quantizer("bsilu", None, "negative", 1)
    x = torch.randn(4096, dtype=torch.float64, requires_grad=True)
    sk.sugar_relu(x, "bsilu", region="negative", bits=1).backward(torch.ones_like(x))
    pos = x.detach() > 0
    assert torch.all(x.grad[pos] == 1.0)
    assert set(x.grad[~pos].unique().tolist()) <= set(q.levels)


# ---- kernels vs the reference quantisation -------------------------------------------------------
def test_pack_unpack_round_trip():
    for bits in C.BITS:
        codes = torch.randint(0, 2**bits, (1001,))
        packed = C.pack(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == C.packed_size(1001, bits)
        assert torch.equal(C.unpack(packed, bits, 1001), codes)
    # element order: first element in the low bits
    assert C.pack(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1]), 1).item() == 0b10000001
    assert C.pack(torch.tensor([3, 1]), 4).item() == 0x13


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", C.BITS)
@pytest.mark.parametrize("name,region", CONFIGS)
def test_kernel_codes_bit_identical_to_reference(dtype, bits, name, region):
    x = _special_input(10_007, dtype)
    levels, thr, icodes = C.tables(name, _alpha(name), region, bits, x.device, dtype)
    search = C.search_table(name, _alpha(name), region, bits, x.device, dtype)
    y, codes = torch.ops.sugar.relu_forward_codes(x, levels, thr, icodes, search, bits)
    assert torch.equal(codes, C.encode_reference(x, thr, icodes, bits))
    assert torch.equal(y.view(torch.uint8), torch.relu(x).view(torch.uint8))


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", C.BITS)
@pytest.mark.parametrize("name,region", CONFIGS[:4])
def test_gradient_is_grad_times_level_of_code(backend, dtype, bits, name, region):
    x = _special_input(3001, dtype).requires_grad_()
    g_out = torch.randn(3001, generator=torch.Generator().manual_seed(2)).to(dtype)
    y = sk.sugar_relu(x, name, region=region, bits=bits, backend=backend)
    assert torch.equal(y.detach().view(torch.uint8), torch.relu(x.detach()).view(torch.uint8))
    y.backward(g_out)
    levels, thr, icodes = C.tables(name, _alpha(name), region, bits, x.device, dtype)
    codes = C.encode_reference(x.detach(), thr, icodes, bits)
    expected = (g_out.to(levels.dtype) * levels[C.unpack(codes, bits, 3001)]).to(dtype)
    assert torch.equal(x.grad, expected)


@needs_cpu_kernels
@pytest.mark.parametrize("layout", ["transposed", "channels_last", "sliced", "empty", "0-dim"])
def test_code_mode_layouts(layout):
    base = torch.randn(4, 6, 5, 3)
    x = {
        "transposed": base.flatten(2).transpose(0, 2),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "sliced": base[:, ::2, 1:],
        "empty": base[:0],
        "0-dim": base[0, 0, 0, 0],
    }[layout]
    out = {}
    for backend in ("cpu", "reference"):
        xx = x.detach().clone().requires_grad_()
        y = sk.sugar_relu(xx, bits=4, backend=backend)
        assert y.stride() == torch.relu(xx.detach()).stride()
        y.backward(torch.ones_like(y))
        out[backend] = (y.detach(), xx.grad)
    assert torch.equal(out["cpu"][0], out["reference"][0])
    assert torch.equal(out["cpu"][1], out["reference"][1])


# ---- in-place -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("bits", [8, 1])
def test_inplace_writes_relu_into_x_and_matches_out_of_place(backend, bits):
    leaf = torch.randn(2, 3, 8, 8, requires_grad=True)
    g = torch.randn(2, 3, 8, 8)
    ref_leaf = leaf.detach().clone().requires_grad_()
    sk.sugar_relu(ref_leaf * 2, bits=bits, backend=backend).backward(g)

    z = leaf * 2
    version = z._version
    y = sk.sugar_relu(z, bits=bits, inplace=True, backend=backend)
    assert y.data_ptr() == z.data_ptr() and z._version > version
    assert torch.equal(z.detach(), torch.relu(leaf.detach() * 2))
    y.backward(g)
    assert torch.equal(leaf.grad, ref_leaf.grad)


@pytest.mark.parametrize("backend", _backends())
def test_inplace_on_leaf_requiring_grad_raises(backend):
    x = torch.randn(8, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        sk.sugar_relu(x, bits=8, inplace=True, backend=backend)


@needs_cpu_kernels
def test_inplace_channels_last_keeps_layout():
    z = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    expected = torch.relu(z)
    y = sk.sugar_relu(z, bits=8, inplace=True)
    assert y is z or y.data_ptr() == z.data_ptr()
    assert z.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(z, expected)


def test_inplace_output_may_be_modified_after_forward():
    leaf = torch.randn(16, requires_grad=True)
    y = sk.sugar_relu(leaf * 1, bits=8, inplace=True)
    y.mul_(2)  # only the codes are saved, so later writes to y do not corrupt backward
    y2 = sk.sugar_relu(y, bits=8)
    y2.sum().backward()  # saved codes do not depend on y's later values: this is allowed
    assert leaf.grad is not None


@pytest.mark.parametrize("bad", [0, 3, 16, -1, 8.0 + 0.5, "8", True])
def test_bad_bits_raise(bad):
    with pytest.raises(ValueError, match="bits must be None"):
        sk.sugar_relu(torch.randn(4), bits=bad)
    with pytest.raises(ValueError, match="bits must be None"):
        sk.SugarReLU(bits=bad)


def test_inplace_without_bits_raises():
    with pytest.raises(ValueError, match="inplace=True needs a code mode"):
        sk.sugar_relu(torch.randn(4), inplace=True)
    with pytest.raises(ValueError, match="inplace=True needs a code mode"):
        sk.SugarReLU(inplace=True)


@needs_cpu_kernels
def test_op_input_checks():
    x = torch.randn(10)
    levels, thr, icodes = C.tables("bsilu", 1.67, "all", 8, x.device, x.dtype)
    search = C.search_table("bsilu", 1.67, "all", 8, x.device, x.dtype)
    with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8"):
        torch.ops.sugar.relu_forward_codes(x, levels, thr, icodes, search, 3)
    with pytest.raises(TypeError, match="levels must be Float for Float inputs"):
        torch.ops.sugar.relu_forward_codes(x, levels.double(), thr, icodes, search, 8)
    with pytest.raises(RuntimeError, match="2\\*\\*bits"):
        torch.ops.sugar.relu_forward_codes(x, levels[:4], thr, icodes, search, 8)
    with pytest.raises(RuntimeError, match="interval codes"):
        torch.ops.sugar.relu_forward_codes(x, levels, thr, icodes[:-1], search, 8)
    codes = torch.ops.sugar.relu_forward_codes(x, levels, thr, icodes, search, 8)[1]
    with pytest.raises(RuntimeError, match="codes hold"):
        torch.ops.sugar.relu_backward_codes(torch.ones(11), codes, levels, 8)


# ---- torch.library / torch.compile --------------------------------------------------------------
@pytest.mark.parametrize("prefix", [pytest.param("", marks=needs_cpu_kernels), "reference_"])
@pytest.mark.parametrize("bits", [8, 2])
def test_opcheck_code_ops(bits, prefix):
    ops = [getattr(torch.ops.sugar, prefix + name) for name in CODE_OPS]
    forward, forward_, backward = ops
    for x in (torch.randn(37), torch.randn(3, 5, 4).transpose(0, 2)):
        levels, thr, icodes = C.tables("bsilu", 1.67, "all", bits, x.device, x.dtype)
        search = C.search_table("bsilu", 1.67, "all", bits, x.device, x.dtype)
        xr = x.clone().requires_grad_()
        torch.library.opcheck(forward, (xr, levels, thr, icodes, search, bits))
        torch.library.opcheck(forward_, (x.clone(), levels, thr, icodes, search, bits))
        codes = forward(x, levels, thr, icodes, search, bits)[1]
        torch.library.opcheck(backward, (torch.randn_like(x), codes, levels, bits))


@needs_cpu_kernels
@pytest.mark.parametrize("inplace", [False, True])
def test_compile_fullgraph_code_modes(inplace):
    torch._dynamo.reset()

    def step(x, w):
        h = sk.sugar_relu(x @ w, "bsilu", bits=8, inplace=inplace)
        return (h * h).sum()

    x = torch.randn(32, 16)
    w = torch.randn(16, 24, requires_grad=True)
    eager_loss = step(x, w)
    (eager_grad,) = torch.autograd.grad(eager_loss, w)
    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(x, w)
    (grad,) = torch.autograd.grad(loss, w)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-4)


# ---- saved state goes through save_for_backward ----------------------------------------------
def test_saved_code_is_visible_to_saved_tensors_hooks_and_save_on_cpu():
    seen = []

    def pack(t):
        seen.append((t.dtype, t.numel()))
        return t

    x = torch.randn(1000, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = sk.sugar_relu(x * 1, bits=2, inplace=True)
    assert (torch.uint8, 250) in seen
    assert all(dtype == torch.uint8 or numel <= 4 for dtype, numel in seen)  # x is not kept
    with torch.autograd.graph.save_on_cpu():
        y2 = sk.sugar_relu(x * 1, bits=2)
    y.sum().backward()
    g1 = x.grad.clone()
    x.grad = None
    y2.sum().backward()
    assert torch.equal(x.grad, g1)


# ---- memory targets (issue 4): conv-BN-activation network ---------------------------------------
def test_bits8_inplace_memory_vs_relu_and_gelu():
    from benchmarks.memory import VARIANTS, _swap, conv_bn_net, saved_bytes

    x = torch.randn(8, 3, 16, 16)

    def measure(variant):
        torch.manual_seed(0)
        return saved_bytes(_swap(conv_bn_net(width=16, depth=4), VARIANTS[variant]), x)

    relu, gelu = measure("relu (inplace)"), measure("gelu")
    sugar8 = measure("sugar bits=8 inplace")
    assert sugar8 <= 1.15 * relu
    assert sugar8 <= 0.8 * gelu
    assert measure("sugar exact") > sugar8  # exact keeps x


def test_convert_with_bits_inplace_trains_conv_bn_net():
    torch.manual_seed(0)
    from benchmarks.memory import conv_bn_net

    net = sk.convert(conv_bn_net(width=8, depth=3), "bsilu", bits=8, inplace=True)
    assert all(m.inplace for m in net.modules() if isinstance(m, sk.SugarReLU))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, target = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
