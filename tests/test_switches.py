"""The training switches: each changes training as it says, on tiny runs and hand-checked steps.

--ema, --mixup, --cutmix, --clip-grad-norm, --amp, --compile, --deterministic, and `fmnist lr-find`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import fmnist_here, fmnist_process, one_line, snapshot, tiny_train_args, write_dataset
from fmnist.cli.main import main
from fmnist.data.augment import Mixing
from fmnist.data.loader import TensorLoader, normalize
from fmnist.data.splits import read_split
from fmnist.files import exclusive_lock
from fmnist.models import create_model
from fmnist.runs.checkpoint import load_checkpoint
from fmnist.training.build import build_ema
from fmnist.training.loop import Optimization, backward_and_step, train_one_epoch
from fmnist.training.runtime import seed_everything


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny")


def batches(data: Path, count: int = 2, size: int = 50) -> list[tuple[torch.Tensor, torch.Tensor]]:
    split = read_split(data, "train")
    return [(normalize(split.images[i * size:(i + 1) * size]), split.labels[i * size:(i + 1) * size])
            for i in range(count)]


def test_ema_follows_the_decay_formula_on_hand_checked_steps(data):
    torch.manual_seed(0)
    model = create_model("mlp")
    ema = build_ema(model, decay=0.9)
    optimization = Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.5), ema=ema)
    first, second = batches(data)
    train_one_epoch(model, [first], optimization)
    after_one = [parameter.detach().clone() for parameter in model.parameters()]
    for averaged, weights in zip(ema.module.parameters(), after_one, strict=True):
        assert torch.equal(averaged, weights)  # the first update copies the weights
    train_one_epoch(model, [second], optimization)
    for averaged, old, new in zip(ema.module.parameters(), after_one, model.parameters(), strict=True):
        torch.testing.assert_close(averaged, 0.9 * old + 0.1 * new.detach())
        assert not torch.equal(averaged, new)  # the average lags behind the raw weights


def test_clipping_bounds_the_gradient_norm(data):
    torch.manual_seed(0)
    model = create_model("mlp")
    images, labels = batches(data, 1)[0]
    loss = torch.nn.functional.cross_entropy(model(images * 100), labels)  # huge inputs, huge gradients
    optimization = Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.0),
                                clip_grad_norm=0.01)
    backward_and_step(model, loss, optimization)
    norm = torch.norm(torch.stack([parameter.grad.norm() for parameter in model.parameters()]))
    assert norm == pytest.approx(0.01, rel=1e-4)


def test_mixup_and_cutmix_make_soft_targets(data):
    split = read_split(data, "train")
    for mixing in (Mixing(mixup=0.4), Mixing(cutmix=1.0), Mixing(mixup=0.4, cutmix=1.0)):
        loader = TensorLoader(split, 50, shuffle=True, seed=3, mix=mixing)
        images, targets = next(iter(loader))
        assert targets.shape == (50, 10) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(50))
        assert (targets.max(dim=1).values < 1).any()  # really mixed, not one-hot
        assert images.shape == (50, 1, 28, 28)
    # The same seed gives the same mixing: resuming from the loader's generator repeats it.
    first = [targets for _, targets in TensorLoader(split, 50, shuffle=True, seed=3, mix=Mixing(0.4, 1.0))]
    again = [targets for _, targets in TensorLoader(split, 50, shuffle=True, seed=3, mix=Mixing(0.4, 1.0))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_cutmix_mixes_labels_by_the_pasted_area(data):
    split = read_split(data, "train")
    loader = TensorLoader(split, 50, shuffle=True, seed=1, mix=Mixing(cutmix=1.0))
    raw = TensorLoader(split, 50, shuffle=True, seed=1)
    (images, targets), (original, labels) = next(iter(loader)), next(iter(raw))
    changed = (images != original).flatten(1).float().mean(dim=1)  # the share of pixels pasted over
    own_share = targets[torch.arange(50), labels]
    mixed = own_share < 1  # an image paired with one of its own class keeps a one-hot target
    assert mixed.any()
    # The box's share of the image is the partner's share of the label; nearly every pasted pixel differs.
    assert torch.all(changed[mixed] <= 1 - own_share[mixed] + 1e-6)
    assert torch.all(changed[mixed] > 0.9 * (1 - own_share[mixed]))


def test_a_run_with_ema_keeps_the_average_in_best_pt_and_the_raw_weights_for_resume(data, tmp_path):
    result = fmnist_here([*tiny_train_args(data, tmp_path, "ema", epochs=2), "--ema", "0.9"])
    assert result.returncode == 0, result.stderr
    best, last = load_checkpoint(tmp_path / "ema" / "best.pt"), load_checkpoint(tmp_path / "ema" / "last.pt")
    assert "raw_model" in last and last["ema_updates"] == 8
    assert not torch.equal(last["model"]["0.weight"], last["raw_model"]["0.weight"])
    evaluated = fmnist_here(["evaluate", str(tmp_path / "ema"), "--allow-unverified-data", "--json"])
    summary = json.loads((tmp_path / "ema" / "summary.json").read_text())
    assert json.loads(evaluated.stdout)["test_accuracy"] == summary["test_accuracy"]  # evaluate uses the average
    assert best["epoch"] in (1, 2)


@pytest.mark.parametrize("switches", [["--ema", "0.9", "--mixup", "0.4", "--cutmix", "1.0", "--hflip"],
                                      ["--clip-grad-norm", "0.5", "--amp", "bf16"],
                                      # killed in epoch 2: the resume must mirror as epoch 2 does, not as epoch 1
                                      ["--hflip", "--alternate-flips", "--crop-padding", "1"]])
def test_sigkill_and_resume_stay_bit_identical_with_the_switches_on(data, tmp_path, switches):
    reference = fmnist_here([*tiny_train_args(data, tmp_path, "reference"), *switches, "--no-report"])
    assert reference.returncode == 0, reference.stderr
    killed = fmnist_process([*tiny_train_args(data, tmp_path, "killed"), *switches, "--no-report"],
                            kill_at="train-step:6")
    assert killed.returncode == -9
    assert fmnist_here(["train", "--resume", str(tmp_path / "killed")]).returncode == 0
    for name in ("best.pt", "last.pt"):
        resumed, uninterrupted = load_checkpoint(tmp_path / "killed" / name), load_checkpoint(
            tmp_path / "reference" / name)
        for key in ("model", "raw_model"):
            if key in uninterrupted:
                assert all(torch.equal(resumed[key][k], uninterrupted[key][k]) for k in uninterrupted[key])
    assert ((tmp_path / "killed" / "metrics.csv").read_text().split("\n")[1].split(",")[:6]
            == (tmp_path / "reference" / "metrics.csv").read_text().split("\n")[1].split(",")[:6])


def test_bf16_autocast_runs_the_forward_pass_in_bf16(data):
    from fmnist.training.loop import autocast

    model = create_model("affine-cnn")
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    optimization = Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01),
                                autocast=torch.bfloat16)
    with autocast(optimization, torch.device("cpu")):
        model(batches(data, 1)[0][0])
    assert seen == [torch.bfloat16]


def test_fp16_is_refused_off_cuda(tmp_path):
    error = one_line(fmnist_here(["train", "--amp", "fp16", "--device", "cpu", "--out", str(tmp_path)]))
    assert "--amp" in error and "cuda" in error


def test_deterministic_decides_cudnns_autotuner():
    seed_everything(1, deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    seed_everything(1, deterministic=True)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert torch.are_deterministic_algorithms_enabled()
    # ... without filling every new tensor with NaN, which only slows the run down
    assert not torch.utils.deterministic.fill_uninitialized_memory


@pytest.mark.slow
def test_compile_trains_the_same_network(data, tmp_path):
    # One batch shape for training, validation and test (50 images): torch.compile compiles each shape anew.
    arguments = [*tiny_train_args(data, tmp_path, "compiled", epochs=1), "--model", "mlp", "--compile",
                 "--eval-batch-size", "50"]
    result = fmnist_process(arguments, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "0._orig_mod" not in str(load_checkpoint(tmp_path / "compiled" / "best.pt")["model"].keys())


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory) -> Path:
    """A finished one-epoch run that tests only read (each checks that it stays unchanged)."""
    out = tmp_path_factory.mktemp("runs")
    assert fmnist_here(tiny_train_args(data, out, "run", epochs=1)).returncode == 0
    return out / "run"


def test_lr_find_writes_its_plot_and_leaves_the_run_untouched(finished_run, tmp_path):
    run = finished_run
    before = snapshot(run)
    plot = tmp_path / "curve.png"
    result = fmnist_here(["lr-find", str(run), "--steps", "30", "--plot", str(plot), "--json"])
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert plot.read_bytes().startswith(b"\x89PNG") and len(found["learning_rates"]) >= 10
    assert found["learning_rates"] == sorted(found["learning_rates"])  # growing exponentially
    assert 0 < found["suggested_lr"] < found["learning_rates"][-1]
    assert snapshot(run) == before
    assert "pass --force" in one_line(fmnist_here(["lr-find", str(run), "--steps", "30", "--plot", str(plot)]))
    assert "--epochs" in one_line(fmnist_here(["lr-find", "quick", "--epochs", "3"]))


def test_lr_find_refuses_a_run_that_another_process_is_training(finished_run, tmp_path):
    before = snapshot(finished_run)
    plot = tmp_path / "curve.png"
    with exclusive_lock(finished_run, "run folder"):  # stands in for `fmnist train` writing the run right now
        error = one_line(fmnist_process(["lr-find", str(finished_run), "--steps", "10", "--plot", str(plot)]))
    assert "is using it right now" in error and str(finished_run) in error
    assert snapshot(finished_run) == before and not plot.exists()


@pytest.mark.parametrize(("start", "fragment"), [
    ("no-such-recipe", "unknown recipe; choose one of"),
    ("missing/run", "not a run folder (no config.json) nor a recipe"),
])
def test_lr_find_refuses_what_is_neither_a_recipe_nor_a_run(start, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", start, "--steps", "10"]) == 2
    error = capsys.readouterr().err
    assert fragment in error and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no plot


@pytest.mark.parametrize("switch", [
    "--ema 0", "--ema 1", "--ema -1", "--ema nan", "--ema inf", "--ema abc", "--ema 1e400",
    "--mixup -0.1", "--mixup nan", "--mixup inf", "--mixup=-inf", "--cutmix -1", "--cutmix nan", "--cutmix inf",
    "--clip-grad-norm 0", "--clip-grad-norm -1", "--clip-grad-norm nan", "--clip-grad-norm inf",
    "--amp fp16 --device cpu", "--amp fp32", "--mixup 0.2 --loss focal",
])
@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_out_of_range_switches_are_one_line_before_any_work(command, switch, data, tmp_path, capsys):
    arguments = [command, *(["quick"] if command == "lr-find" else []), "--data-dir", str(data),
                 "--allow-unverified-data", "--out" if command == "train" else "--plot", str(tmp_path / "out"),
                 *switch.split()]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith("fmnist: error: --") and error.count("\n") == 1, error
    assert list(tmp_path.iterdir()) == []


def test_fp16_on_a_cpu_is_refused_by_lr_find_before_the_data_is_loaded(tmp_path, capsys):
    assert main(["lr-find", "quick", "--amp", "fp16", "--device", "auto", "--data-dir", str(tmp_path / "none"),
                 "--plot", str(tmp_path / "curve.png")]) == 2
    error = capsys.readouterr().err
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: fp16 is allowed")
    assert "--amp fp16: needs a CUDA device" in error and error.count("\n") == 1


def test_the_switches_are_recorded_and_kept_through_resume(data, tmp_path):
    arguments = [*tiny_train_args(data, tmp_path, "switches"), "--ema", "0.95", "--mixup", "0.3",
                 "--clip-grad-norm", "2", "--no-deterministic"]
    stopped = fmnist_process(arguments, kill_at="train-step:6:SIGTERM")
    assert stopped.returncode == 143
    saved = json.loads((tmp_path / "switches" / "config.json").read_text())["config"]
    assert (saved["ema"], saved["mixup"], saved["clip_grad_norm"], saved["deterministic"]) == (0.95, 0.3, 2.0, False)
    shutil.copy(tmp_path / "switches" / "config.json", tmp_path / "before.json")
    assert fmnist_here(["train", "--resume", str(tmp_path / "switches")]).returncode == 0
    assert json.loads((tmp_path / "switches" / "config.json").read_text())["config"] == saved
