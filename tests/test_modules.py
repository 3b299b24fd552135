"""nn.Module integration: SugarReLU as a drop-in nn.ReLU, convert() and strip()."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from helpers import DTYPES, assert_bitwise_equal, sample_inputs
from torch import nn

import sugar_kernels as sk

CPU_BACKENDS = sk.available_backends("cpu")


def _net() -> nn.Sequential:
    """A small conv-BN-ReLU net with a nested block, a GELU and an in-place ReLU."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
            nn.GELU(),
        )


def _input(requires_grad=False):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 9, 9, generator=g).requires_grad_(requires_grad)


def _modules_of(model, cls):
    return [name for name, m in model.named_modules() if type(m) is cls]


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d)[6:] for d in DTYPES])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sugar_relu_module_forward_equals_nn_relu(backend, dtype):
    act = sk.SugarReLU("mish", region="negative", backend=backend)
    for name, x in sample_inputs("cpu", dtype):
        assert_bitwise_equal(act(x), nn.ReLU()(x), name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sugar_relu_module_grad_equals_functional(backend):
    x = torch.randn(3, 17, requires_grad=True)
    go = torch.randn(3, 17)
    (g_mod,) = torch.autograd.grad(sk.SugarReLU("elu", alpha=0.3, backend=backend)(x), x, go)
    (g_fn,) = torch.autograd.grad(sk.sugar_relu(x, "elu", alpha=0.3, backend=backend), x, go)
    assert_bitwise_equal(g_mod, g_fn, "module vs functional")
    # and it is not ReLU's gradient
    (g_relu,) = torch.autograd.grad(torch.relu(x), x, go)
    assert not torch.equal(g_mod, g_relu)


@pytest.mark.parametrize("surrogate", list(sk.SURROGATES))
def test_sugar_relu_module_every_surrogate(surrogate):
    """Default construction works end to end for every surrogate, with or without alpha."""
    x = torch.randn(4, 9, requires_grad=True)
    go = torch.randn(4, 9)
    act = sk.SugarReLU(surrogate)
    (g_mod,) = torch.autograd.grad(act(x), x, go)
    (g_fn,) = torch.autograd.grad(sk.sugar_relu(x, surrogate), x, go)
    assert_bitwise_equal(g_mod, g_fn, surrogate)
    # a module built from its own repr arguments behaves the same (what convert/strip rely on)
    clone = sk.SugarReLU(
        act.surrogate,
        region=act.region,
        alpha=act.alpha if sk.SURROGATES[surrogate].has_alpha else None,
    )
    (g_clone,) = torch.autograd.grad(clone(x), x, go)
    assert_bitwise_equal(g_clone, g_mod, surrogate)


def test_extra_repr():
    assert repr(sk.SugarReLU()) == "SugarReLU(surrogate='bsilu', alpha=1.67)"
    assert repr(sk.SugarReLU("gelu")) == "SugarReLU(surrogate='gelu')"
    assert (
        repr(sk.SugarReLU("elu", alpha=0.5, region="negative", backend="reference"))
        == "SugarReLU(surrogate='elu', alpha=0.5, region='negative', backend='reference')"
    )
    assert repr(sk.SugarReLU("leaky_relu")) == "SugarReLU(surrogate='leaky_relu', alpha=0.01)"
    # in a model printout, like nn.ReLU
    assert "(1): SugarReLU(surrogate='nelu', alpha=0.01)" in repr(
        nn.Sequential(nn.Identity(), sk.SugarReLU("nelu"))
    )


def test_module_attributes_resolved():
    act = sk.SugarReLU("elu")
    assert (act.surrogate, act.alpha, act.region, act.bits, act.inplace, act.backend) == (
        "elu",
        1.0,
        "all",
        None,
        False,
        "auto",
    )
    assert list(act.parameters()) == [] and list(act.buffers()) == []


def test_convert_replaces_relu_and_keeps_other_modules():
    net = _net().eval()
    x = _input()
    before = net(x)
    others = {
        name: m
        for name, m in net.named_modules()
        if name and not isinstance(m, (nn.ReLU, nn.Sequential))
    }
    state = {k: v.clone() for k, v in net.state_dict().items()}

    out = sk.convert(net, "bsilu")
    assert out is net, "convert works in place and returns the model"
    assert _modules_of(net, nn.ReLU) == []
    assert _modules_of(net, sk.SugarReLU) == ["2", "3.2"]
    for name, m in net.named_modules():
        if isinstance(m, sk.SugarReLU):
            assert (m.surrogate, m.alpha, m.region) == ("bsilu", 1.67, "all")
            assert m.inplace is False, "exact mode must not inherit nn.ReLU(inplace=True)"
        elif name in others:
            assert m is others[name], f"{name} was replaced"
    assert isinstance(net[7], nn.GELU)
    assert net.state_dict().keys() == state.keys()
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert_bitwise_equal(net(x), before, "forward after convert")


def test_convert_gradients_are_sugar():
    """After convert, parameter gradients are the SUGAR ones (paper formula), not ReLU's."""
    x = _input()

    class Paper(nn.Module):
        def forward(self, t):
            return sk.paper_formula(t, "bsilu", 1.67, "all")

    def grads(model):
        model.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = _net()
    paper = _net()
    for parent in list(paper.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, Paper())
    sugar = sk.convert(_net(), "bsilu")
    g_plain, g_paper, g_sugar = grads(plain), grads(paper), grads(sugar)
    for gs, gp in zip(g_sugar, g_paper, strict=True):
        torch.testing.assert_close(gs, gp, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(gs, gr) for gs, gr in zip(g_sugar, g_plain, strict=True))


def test_convert_with_arguments_and_idempotent():
    net = sk.convert(_net(), "elu", alpha=0.5, region="negative", backend="reference")
    acts = [m for m in net.modules() if isinstance(m, sk.SugarReLU)]
    assert len(acts) == 2
    for m in acts:
        assert (m.surrogate, m.alpha, m.region, m.backend) == ("elu", 0.5, "negative", "reference")
    ids = [id(m) for m in acts]
    sk.convert(net, "gelu")  # already converted: nothing to replace
    assert [id(m) for m in net.modules() if isinstance(m, sk.SugarReLU)] == ids


def test_convert_other_activation_type():
    net = sk.convert(_net(), replace=(nn.GELU,), surrogate="nelu")
    assert _modules_of(net, nn.ReLU) == ["2", "3.2"], "ReLUs must stay"
    assert _modules_of(net, nn.GELU) == []
    assert isinstance(net[7], sk.SugarReLU) and net[7].surrogate == "nelu"
    x = _input()
    torch.testing.assert_close(net(x), torch.relu(net[:7](x)), rtol=0, atol=0)


def test_strip_restores_nn_relu_bitwise():
    x = _input()
    original = _net().eval()
    expected = original(x)
    converted = sk.convert(copy.deepcopy(original), "mish", region="negative")
    stripped = sk.strip(converted)
    assert stripped is converted
    assert _modules_of(stripped, sk.SugarReLU) == []
    assert _modules_of(stripped, nn.ReLU) == ["2", "3.2"]
    assert isinstance(stripped[7], nn.GELU)
    assert_bitwise_equal(stripped(x), expected, "stripped forward")
    # strip on a bare module returns a new nn.ReLU
    bare = sk.strip(sk.SugarReLU("gelu"))
    assert type(bare) is nn.ReLU and bare.inplace is False
    for name, t in sample_inputs("cpu", torch.float32):
        assert_bitwise_equal(bare(t), torch.relu(t), name)


def test_converted_model_deepcopy_and_save_load():
    net = sk.convert(_net(), "silu").eval()
    x = _input()
    expected = net(x)
    assert_bitwise_equal(copy.deepcopy(net)(x), expected, "deepcopy")
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert repr(loaded) == repr(net)
    assert_bitwise_equal(loaded(x), expected, "save/load")
    # the state_dict of a converted model loads into the plain model and back
    plain = _net()
    plain.load_state_dict(net.state_dict())
    assert_bitwise_equal(plain.eval()(x), expected, "state_dict into plain model")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_train_step_runs(backend):
    """One optimiser step through the converted net in train mode (BN in training)."""
    net = sk.convert(_net(), "bsilu", backend=backend)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = _input()
    loss0 = net(x).square().mean()
    loss0.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opt.step()
    assert torch.isfinite(net(x).square().mean())
