"""benchmarks.train: activations, data loading (digits, CIFAR on-disk format), measurements,
progress output and the JSON schema of a tiny run."""

import gc
import json
import pickle
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import sugar_kernels as sk
from benchmarks.train import cli, loop, models
from benchmarks.train import data as datasets

# ------------------------------------------------------------------------------- activations


def test_parse_activation():
    assert models.parse_activation("relu") == {"kind": "relu", "surrogate": None, "bits": None}
    assert models.parse_activation("sugar-bsilu") == {
        "kind": "sugar",
        "surrogate": "bsilu",
        "bits": None,
    }
    assert models.parse_activation("sugar-nelu-b8") == {
        "kind": "sugar",
        "surrogate": "nelu",
        "bits": 8,
    }
    assert models.parse_activation("sugar-leaky_relu")["surrogate"] == "leaky_relu"
    for bad in ("tanh", "sugar-nope", "sugar-"):
        with pytest.raises(ValueError):
            models.parse_activation(bad)


def test_apply_activation_same_initial_weights():
    torch.manual_seed(0)
    base = models.build_model("cnn", 1, 10, 8, width=4)
    state = base.state_dict()
    for name, cls in (("gelu", nn.GELU), ("sugar-nelu", sk.SugarReLU)):
        torch.manual_seed(0)
        model = models.apply_activation(models.build_model("cnn", 1, 10, 8, width=4), name)
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
        assert sum(isinstance(m, cls) for m in model.modules()) == 4
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    relu = models.apply_activation(models.build_model("cnn", 1, 10, 8, width=4), "relu")
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 4


def test_bits8_variants_follow_the_probe():
    names = models.available_activations()
    assert names[:4] == ["relu", "gelu", "sugar-bsilu", "sugar-nelu"]
    assert ("sugar-bsilu-b8" in names) == models.bits8_available()
    assert ("sugar-nelu-b8" in names) == models.bits8_available()


@pytest.mark.parametrize("model", ["cnn", "resnet18", "vgg16", "vgg16_bn"])
@pytest.mark.parametrize("shape", [(1, 8), (3, 32)])
def test_models_build_and_run(model, shape):
    if model != "cnn":
        pytest.importorskip("torchvision")
    channels, size = shape
    if model != "cnn" and size == 32:
        size = 16  # keep the big models fast; the CIFAR stem does not care about the size
    m = models.build_model(model, channels, 7, size)
    assert m(torch.randn(2, channels, size, size)).shape == (2, 7)
    if model == "resnet18":
        assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
        assert isinstance(m.maxpool, nn.Identity)
    if model.startswith("vgg16"):
        assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 13
        assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == (model == "vgg16_bn")


def test_stress_init_leaves_the_output_layer_alone():
    torch.manual_seed(0)
    m = models.build_model("cnn", 1, 10, 8, width=4)
    out_bias = m.classifier[-1].bias.detach().clone()
    models.stress_init(m, 0.5)
    for layer in [*m.features, m.classifier[1]]:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            assert torch.all(layer.bias == -0.5)
    torch.testing.assert_close(m.classifier[-1].bias.detach(), out_bias)


# ------------------------------------------------------------------------------- data


def test_digits_split_is_fixed_and_normalised():
    d = datasets.load_digits()
    assert (len(d.train), len(d.test)) == (1437, 360)
    assert d.train.x.shape[1:] == (1, 8, 8) and d.num_classes == 10
    x, y = d.batch(d.train, torch.arange(len(d.train)), "cpu")
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2
    assert torch.equal(datasets.load_digits().test.y, d.test.y)


def write_cifar(root, name, n_per_file, seed=0):
    """A small dataset in torchvision's on-disk CIFAR format; returns {file: (data, labels)}."""
    rng = np.random.default_rng(seed)
    folder, train_files, test_files, label_key, classes = datasets.CIFAR_LAYOUT[name]
    path = root / folder
    path.mkdir(parents=True)
    written = {}
    for f in train_files + test_files:
        data = rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n_per_file).tolist()
        entry = {
            "batch_label": f,
            label_key: labels,
            "data": data,
            "filenames": [f"{i}.png" for i in range(n_per_file)],
        }
        if name == "cifar100":
            entry["coarse_labels"] = [lab // 5 for lab in labels]
        with open(path / f, "wb") as fh:
            pickle.dump(entry, fh)
        written[f] = (data, labels)
    meta_file, key = (
        ("batches.meta", "label_names") if name == "cifar10" else ("meta", "fine_label_names")
    )
    with open(path / meta_file, "wb") as fh:
        pickle.dump({key: [f"class{i}" for i in range(classes)]}, fh)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_cifar_from_torchvision_format(tmp_path, name):
    written = write_cifar(tmp_path, name, 6)
    d = datasets.load_cifar(name, tmp_path)
    folder, train_files, test_files, _, classes = datasets.CIFAR_LAYOUT[name]
    assert d.num_classes == classes
    assert d.train.x.shape == (6 * len(train_files), 3, 32, 32) and d.train.x.dtype == torch.uint8
    assert d.test.x.shape == (6, 3, 32, 32)
    data, labels = written[train_files[-1]]
    i = 6 * (len(train_files) - 1) + 2  # 3rd image of the last training file
    # row layout: 1024 red, then green, then blue values, each row-major 32x32
    assert d.train.x[i, 1, 5, 7] == int(data[2, 1024 + 5 * 32 + 7])
    assert d.train.y[i] == labels[2]
    assert torch.equal(d.test.y, torch.tensor(written[test_files[0]][1]))
    # the folder itself works as --data-dir too
    assert torch.equal(datasets.load_cifar(name, tmp_path / folder).train.x, d.train.x)
    x, _ = d.batch(d.train, torch.arange(len(d.train)), "cpu")
    assert x.dtype == torch.float32 and x.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_synthetic_cifar_matches_torchvision_reader(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    write_cifar(tmp_path, "cifar10", 4)
    from torchvision.datasets import cifar

    # torchvision checks the md5 sums of the real files; everything else is its own reader
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    ref = cifar.CIFAR10(root=str(tmp_path), train=True, download=False)
    ours = datasets.load_cifar("cifar10", tmp_path)
    assert torch.equal(torch.as_tensor(ref.data).permute(0, 3, 1, 2), ours.train.x)
    assert ref.targets == ours.train.y.tolist()


def test_cifar_never_downloads_without_flag(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    with pytest.raises(FileNotFoundError, match="--download"):
        datasets.load_cifar("cifar10", tmp_path)
    with pytest.raises(SystemExit):
        cli.parse_args(["--data", "cifar10"])  # no --data-dir


# ------------------------------------------------------------------------------- measurements


def test_saved_bytes_known_answer():
    n, hidden = 16, 8
    x, y = torch.randn(n, 4), torch.randint(0, 3, (n,))

    def model(act):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, hidden), act, nn.Linear(hidden, 3))

    relu = loop.saved_activation_bytes(model(nn.ReLU()), x, y)
    sugar = loop.saved_activation_bytes(model(sk.SugarReLU("bsilu")), x, y)
    # exact SUGAR keeps its float32 input in addition to the output the next Linear saves
    assert sugar - relu == n * hidden * 4
    if models.bits8_available():
        # per sample, the code mode adds one uint8 code per element (on top of a constant: the
        # levels table, saved too); x2, y2 has n more samples
        x2, y2 = torch.cat([x, x]), torch.cat([y, y])
        act = sk.SugarReLU("bsilu", bits=8, inplace=True)
        b8 = loop.saved_activation_bytes(model(act), x, y)
        b8_2 = loop.saved_activation_bytes(model(act), x2, y2)
        relu_2 = loop.saved_activation_bytes(model(nn.ReLU(inplace=True)), x2, y2)
        assert (b8_2 - b8) - (relu_2 - relu) == n * hidden
    # parameters are not counted
    big = nn.Sequential(nn.Linear(4, 1000), nn.ReLU(), nn.Linear(1000, 3))
    assert loop.saved_activation_bytes(big, x[:2], y[:2]) < 1000 * 4 * 4


def test_saved_bytes_frees_the_graph():
    """The measurement must not leak: a pack hook that returns an op's own saved output (relu's)
    closes a cycle output -> grad_fn -> output that no collector sees (0.4-1.4 GB per call)."""
    alive = []

    class Probe(nn.Module):
        def forward(self, h):
            out = torch.relu(h)  # relu saves its own output for backward
            alive.append(weakref.ref(out))
            return out

    model = nn.Sequential(nn.Linear(4, 8), Probe(), nn.Linear(8, 3))
    nbytes = loop.saved_activation_bytes(model, torch.randn(16, 4), torch.randint(0, 3, (16,)))
    assert nbytes > 0
    gc.collect()
    assert alive and alive[0]() is None


def test_quick_and_paper_options():
    a = cli.parse_args(["--quick"])
    assert (a.data, a.model, a.epochs, a.seeds) == ("digits", "cnn", 12, 2)
    assert "relu" in a.activations and any(n.startswith("sugar-") for n in a.activations)
    p = cli.parse_args(["--paper", "--activations", "relu,sugar-bsilu", "gelu"])
    assert (p.optimizer, p.lr, p.batch_size, p.augment) == ("sgd", 0.001, 128, False)
    assert p.activations == ["relu", "sugar-bsilu", "gelu"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--activations", "tanh"])


# ------------------------------------------------------------------------------- end to end

RUN_KEYS = {
    "activation": str,
    "seeds": list,
    "test_accuracy": float,
    "test_accuracy_std": float,
    "dead_fraction": float,
    "dead_fraction_init": float,
    "dead_fraction_per_layer": dict,
    "sparsity": float,
    "inactive_fraction": float,
    "saved_activation_bytes": int,
    "step_time_ms": float,
    "curve": dict,
    "per_seed": list,
}


def check_schema(result, activations, seeds, epochs, n_layers):
    assert result["schema_version"] == cli.SCHEMA_VERSION
    assert {"config", "environment", "runs", "wall_s"} <= set(result)
    assert [r["activation"] for r in result["runs"]] == activations
    for r in result["runs"]:
        for key, typ in RUN_KEYS.items():
            assert isinstance(r[key], typ), (key, r[key])
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["dead_fraction"] <= 1.0
        assert len(r["dead_fraction_per_layer"]) == n_layers
        assert r["seeds"] == seeds and len(r["per_seed"]) == len(seeds)
        assert r["saved_activation_bytes"] > 0
        assert len(r["curve"]["test_accuracy"]) == len(r["curve"]["epoch"]) == epochs + 1
        if r["activation"] == "relu":
            assert r["grad_to_inactive"] == 0.0
        elif r["activation"].startswith("sugar-"):
            assert r["grad_to_inactive"] > 0.0
        accs = [s["test_accuracy"] for s in r["per_seed"]]
        assert r["test_accuracy"] == pytest.approx(float(np.mean(accs)))


def test_tiny_digits_run_json_schema_and_outputs(tmp_path, capsys):
    out_json, out_dir = tmp_path / "r.json", tmp_path / "plots"
    acts = ["relu", "gelu", "sugar-bsilu"]
    rc = cli.main(
        [
            "--epochs",
            "1",
            "--seeds",
            "2",
            "--width",
            "4",
            "--threads",
            "1",
            "--activations",
            ",".join(acts),
            "--json",
            str(out_json),
            "--out",
            str(out_dir),
        ]
    )
    assert rc == 0
    result = json.loads(out_json.read_text())
    check_schema(result, acts, [0, 1], 1, 4)
    captured = capsys.readouterr()
    assert "| activation |" in captured.out
    # progress "auto" with stderr captured (not a terminal): one plain line per epoch, no bars
    assert "\r" not in captured.err
    for act in acts:
        for seed in (0, 1):
            assert f"{act} seed {seed} epoch 1/1: loss " in captured.err
    assert result["environment"]["commit"]
    assert {"results.md", "accuracy.png", "dead_units.png"} <= {p.name for p in out_dir.iterdir()}
    assert "| sugar-bsilu |" in (out_dir / "results.md").read_text()


def test_tiny_cifar_run_end_to_end(tmp_path):
    write_cifar(tmp_path, "cifar10", 8)
    out_json = tmp_path / "r.json"
    rc = cli.main(
        [
            "--data",
            "cifar10",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--seeds",
            "1",
            "--width",
            "4",
            "--threads",
            "1",
            "--augment",
            "--activations",
            "relu,sugar-nelu",
            "--json",
            str(out_json),
            "--no-progress",
        ]
    )
    assert rc == 0
    result = json.loads(out_json.read_text())
    check_schema(result, ["relu", "sugar-nelu"], [0], 1, 4)
    assert result["environment"]["dataset"] == {
        "name": "cifar10",
        "train": 40,
        "test": 8,
        "classes": 10,
        "shape": [3, 32, 32],
    }


def test_relu_learns_digits():
    args = cli.parse_args(
        [
            "--epochs",
            "4",
            "--seeds",
            "1",
            "--width",
            "8",
            "--threads",
            "1",
            "--activations",
            "relu",
            "--no-progress",
        ]
    )
    result = cli.run(args)
    assert result["runs"][0]["test_accuracy"] >= 0.85
