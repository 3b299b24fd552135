"""ActivationMonitor on models with known answers, and convert() on torchvision / timm models."""

import copy

import pytest
import torch
from torch import nn

import sugar_kernels as sk
from sugar_kernels.diagnostics import ActivationMonitor, is_activation, monitor

DEAD = (0, 2, 5)  # planted dead units of an 8-unit layer


def planted_linear(act: nn.Module, dead=DEAD, units=8, level=3.0) -> nn.Sequential:
    """Linear(4, units) -> act -> Linear(units, 3): zero weights, bias -level on the ``dead``
    units and +level on the others, so the pre-activation is exactly -level / +level."""
    model = nn.Sequential(nn.Linear(4, units), act, nn.Linear(units, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(level)
        model[0].bias[list(dead)] = -level
    return model


def planted_conv(act: nn.Module, dead=(1, 4), channels=6) -> nn.Sequential:
    """Conv with planted dead channels; the live channels are positive at some pixels only."""
    model = nn.Sequential(nn.Conv2d(1, channels, 1), act, nn.Flatten(), nn.LazyLinear(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[0].weight[list(dead)] = 0.0
        model[0].bias[list(dead)] = -1.0
    return model


def test_planted_dead_units_linear_known_answer():
    model = planted_linear(nn.ReLU())
    x = torch.randn(16, 4)
    with ActivationMonitor(model) as mon:
        model(x).sum().backward()
    s = mon.summary()
    assert list(s["layers"]) == ["1"]
    layer = s["layers"]["1"]
    assert layer["type"] == "ReLU"
    assert layer["units"] == 8
    assert layer["dead_units"] == len(DEAD)
    assert layer["dead_fraction"] == pytest.approx(3 / 8)
    assert layer["sparsity"] == pytest.approx(3 / 8)
    assert layer["inactive_fraction"] == pytest.approx(3 / 8)
    assert layer["elements"] == 16 * 8
    assert layer["grad_to_inactive"] == 0.0
    assert layer["grad_inactive_nonzero"] == 0.0
    assert layer["grad_to_dead"] == 0.0
    assert s["total"]["dead_fraction"] == pytest.approx(3 / 8)
    assert mon.dead_fraction() == pytest.approx(3 / 8)


def test_planted_dead_channels_conv_inplace_relu():
    model = planted_conv(nn.ReLU(inplace=True))
    x = torch.randn(5, 1, 3, 3)  # live channels: relu(x), positive somewhere in the batch
    model(x)  # materialise the lazy layer outside the monitor
    with monitor(model) as mon:
        model(x).sum().backward()
    layer = mon.summary()["layers"]["1"]
    assert layer["units"] == 6
    assert layer["dead_units"] == 2
    n_zero_live = int((x <= 0).sum()) * 4
    assert layer["sparsity"] == pytest.approx((2 * x.numel() + n_zero_live) / (6 * x.numel()))
    # inplace ReLU: the hook still sees the gradient w.r.t. the pre-activation, 0 where inactive
    assert layer["backward_calls"] == 1
    assert layer["grad_to_inactive"] == 0.0


def test_sugar_gradient_reaches_dead_units_known_share():
    level = 3.0
    model = planted_linear(sk.SugarReLU("bsilu"), level=level)
    x = torch.randn(10, 4)
    with ActivationMonitor(model) as mon:
        model(x).sum().backward()
    layer = mon.summary()["layers"]["1"]
    assert layer["type"] == "SugarReLU"
    assert layer["dead_units"] == 3
    # grad_y is the same per unit for every sample (sum of the last layer's weight column)
    w = model[2].weight.detach().to(torch.float64).sum(0).abs()
    g = sk.grad_factor(torch.tensor([-level, level], dtype=torch.float64), "bsilu", 1.67, "all")
    g = g.abs()  # B-SiLU's slope is negative at -3: the monitor adds |grad|
    per_unit = torch.where(torch.isin(torch.arange(8), torch.tensor(DEAD)), g[0], g[1]) * w
    expected = float(per_unit[list(DEAD)].sum() / per_unit.sum())
    assert layer["grad_to_inactive"] == pytest.approx(expected, rel=1e-5)
    assert layer["grad_to_dead"] == pytest.approx(expected, rel=1e-5)
    assert layer["grad_inactive_nonzero"] == 1.0
    assert 0.0 < expected < 1.0


def test_gelu_and_timm_style_names_are_watched():
    class GELU(nn.Module):  # stands for timm.layers.GELU: matched by class name
        def forward(self, x):
            return nn.functional.gelu(x)

    model = nn.Sequential(
        nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 4), GELU(), nn.Linear(4, 2), nn.Sigmoid()
    )
    assert is_activation(model[1]) and is_activation(model[3]) and not is_activation(model[5])
    with ActivationMonitor(model) as mon:
        model(torch.randn(7, 3))
    s = mon.summary()
    assert set(s["layers"]) == {"1", "3"}
    assert s["layers"]["1"]["type"] == "GELU"
    assert s["layers"]["1"]["sparsity"] < 0.5  # GELU outputs are rarely exactly zero
    assert s["layers"]["1"]["grad_to_inactive"] is None  # no backward ran


def test_unit_dim_channels_last_mlp_and_override():
    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 10)
            self.act = nn.ReLU()
            self.fc2 = nn.Linear(10, 6)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    model = Mlp()
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 5, 6))  # (batch, tokens, features)
    assert mon.summary()["layers"]["act"]["units"] == 10
    with ActivationMonitor(model, unit_dim=1) as mon:
        model(torch.randn(2, 5, 6))
    assert mon.summary()["layers"]["act"]["units"] == 5


def test_shared_module_called_twice_gets_one_entry_per_call():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 7)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.b(self.relu(self.a(x))))

    model = Block()
    with ActivationMonitor(model) as mon:
        for _ in range(3):
            model(torch.randn(2, 4))
    layers = mon.summary()["layers"]
    assert set(layers) == {"relu", "relu#1"}
    assert layers["relu"]["units"] == 4 and layers["relu#1"]["units"] == 7
    assert layers["relu"]["forward_calls"] == 3


def test_detach_reset_and_no_grad():
    model = planted_linear(nn.ReLU())
    mon = ActivationMonitor(model).attach()
    assert mon.attached
    with torch.no_grad():
        model(torch.randn(4, 4))
    s = mon.summary()
    assert s["layers"]["1"]["elements"] == 32
    assert s["total"]["grad_to_inactive"] is None
    mon.reset()
    assert mon.summary()["layers"] == {}
    mon.detach()
    assert not mon.attached
    model(torch.randn(4, 4)).sum().backward()
    assert mon.summary()["layers"] == {}
    assert not model._forward_hooks and not model[1]._forward_hooks
    assert not model._forward_pre_hooks and not model[1]._forward_pre_hooks


def test_dead_is_over_the_whole_dataset_not_per_batch():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    with ActivationMonitor(model) as mon:
        model(torch.tensor([[-1.0, 1.0, -1.0]]))
        model(torch.tensor([[1.0, -1.0, -1.0]]))
    layer = mon.summary()["layers"]["1"]
    assert layer["dead_units"] == 1  # only the last unit never fired
    assert layer["sparsity"] == pytest.approx(4 / 6)


# ------------------------------------------------------------------------------- convert()


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("arch", ["resnet18", "vgg16"])
def test_convert_torchvision_forward_unchanged(arch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    n_relu = _count(model, nn.ReLU)
    assert n_relu > 0
    sk.convert(model, "bsilu")
    assert _count(model, nn.ReLU) == 0
    assert _count(model, sk.SugarReLU) == n_relu
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    sk.strip(model)
    assert _count(model, sk.SugarReLU) == 0 and _count(model, nn.ReLU) == n_relu


def test_monitor_on_torchvision_resnet18_names_shared_relu_calls():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    sk.convert(model, "bsilu")
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    layers = mon.summary()["layers"]
    # stem relu + 8 BasicBlocks calling self.relu twice each
    assert len(layers) == 1 + 8 * 2
    assert "layer1.0.relu" in layers and "layer1.0.relu#1" in layers
    assert layers["layer4.1.relu#1"]["units"] == 512
    assert all(v["backward_calls"] == 1 for v in layers.values())


def _timm_models():
    timm = pytest.importorskip("timm")
    from timm.models.convnext import ConvNeXt
    from timm.models.swin_transformer import SwinTransformer

    convnext = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10)
    swin = SwinTransformer(
        img_size=32,
        patch_size=2,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=4,
        num_classes=10,
        drop_path_rate=0.0,
    )
    return timm, {"convnext": convnext, "swin": swin}


@pytest.mark.parametrize("arch", ["convnext", "swin"])
def test_convert_timm_gelu_to_sugar_nelu(arch):
    timm, models = _timm_models()
    torch.manual_seed(0)
    model = models[arch].eval()
    # timm's ConvNeXt uses timm.layers.GELU (not an nn.GELU subclass); Swin uses nn.GELU
    gelu_types = (nn.GELU, timm.layers.GELU)
    n_gelu = _count(model, gelu_types)
    assert n_gelu > 0
    relu_twin = copy.deepcopy(model)
    for parent in list(relu_twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, gelu_types):
                setattr(parent, name, nn.ReLU())
    sk.convert(model, "nelu", replace=gelu_types)
    assert _count(model, gelu_types) == 0
    sugar = [m for m in model.modules() if isinstance(m, sk.SugarReLU)]
    assert len(sugar) == n_gelu and all(m.surrogate == "nelu" for m in sugar)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), relu_twin(x), rtol=0, atol=0)
    # trains: gradients flow and the monitor sees the converted MLP activations per hidden feature
    model.train()
    with ActivationMonitor(model) as mon:
        model(x).sum().backward()
    layers = mon.summary()["layers"]
    assert len(layers) == n_gelu
    hidden = {m.fc1.out_features for m in model.modules() if hasattr(m, "fc1")}
    assert {v["units"] for v in layers.values()} <= hidden
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
