"""Models from other packages: the `fmnist.models` entry-point group, and what a checkpoint of a model
this process does not know says (which model, how to make it known; never "damaged")."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fmnist_process, one_line, tiny_train_args, write_dataset

SRC = str(Path(__file__).parents[1] / "src")

PLUGIN_MODULE = '''
from torch import nn
from fmnist import register_model


@register_model("plugin-mlp")
def plugin_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def plugin_factory():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
'''


def install_plugin(site: Path) -> Path:
    """A tiny installed distribution: a module and a *.dist-info with entry_points.txt (all
    importlib.metadata needs), declaring a module of models and one factory by name."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "fmnist_tiny_plugin.py").write_text(PLUGIN_MODULE)
    info = site / "fmnist_tiny_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fmnist-tiny-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[fmnist.models]\nzoo = fmnist_tiny_plugin\nplugin-factory = fmnist_tiny_plugin:plugin_factory\n")
    return site


def environment(*paths: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([*map(str, paths), SRC])}


def plain_train_args(data: Path, out: Path, name: str, model: str) -> list[str]:
    return [*tiny_train_args(data, out, name, epochs=1), "--model", model]


def test_an_installed_package_adds_models_that_every_command_sees(tmp_path):
    site = install_plugin(tmp_path / "site")
    data = write_dataset(tmp_path / "data")
    with_plugin = environment(site)
    names = set(json.loads(listed_models(with_plugin).stdout))  # what `fmnist models` lists
    assert {"plugin-mlp", "plugin-factory", "affine-cnn"} <= names
    for model in ("plugin-mlp",):  # the factory's model is built the same way once registered
        trained = fmnist_process(plain_train_args(data, tmp_path / "runs", model, model), env=with_plugin)
        assert trained.returncode == 0, trained.stderr
        evaluated = fmnist_process(["evaluate", str(tmp_path / "runs" / model), "--allow-unverified-data",
                                    "--json"], env=with_plugin, timeout=120)
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads(evaluated.stdout)["model"] == model

    # Without the package, the checkpoint says which model is missing and what to install: not "damaged".
    without = fmnist_process(["evaluate", str(tmp_path / "runs" / "plugin-mlp"), "--allow-unverified-data"],
                             env=environment(), timeout=120)
    line = one_line(without)
    assert "'plugin-mlp'" in line and "pip install fmnist-tiny-plugin" in line and "damaged" not in line


def listed_models(env: dict) -> subprocess.CompletedProcess:
    """list_models() in a new process (`fmnist models` lists these, building each: slow for the big ones)."""
    code = ("import json, logging; logging.basicConfig(format='%(message)s'); from fmnist import list_models; "
            "print(json.dumps(list_models()))")
    listed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    return listed


def test_a_plugin_that_fails_to_import_is_a_warning_not_the_end_of_fmnist(tmp_path):
    site = install_plugin(tmp_path / "site")
    (site / "fmnist_tiny_plugin.py").write_text("raise RuntimeError('broken on purpose')\n")
    listed = listed_models(environment(site))
    assert "affine-cnn" in json.loads(listed.stdout)
    assert "fmnist-tiny-plugin" in listed.stderr and "broken on purpose" in listed.stderr


def test_a_model_registered_by_a_module_is_named_in_the_error_and_in_the_rerun_snippet(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_models.py").write_text(PLUGIN_MODULE.replace("plugin-mlp", "my-mlp"))
    data = write_dataset(tmp_path / "data")
    script = (
        "import my_models\n"
        "from fmnist import TrainConfig, train\n"
        f"train(TrainConfig(model='my-mlp', epochs=1, batch_size=50, limit_batches=2, val_size=100, device='cpu', "
        f"data_dir={str(data)!r}, allow_unverified_data=True, out={str(tmp_path / 'runs')!r}, name='mine'))\n"
    )
    trained = subprocess.run([sys.executable, "-c", script], env=environment(code), capture_output=True, text=True,
                             timeout=300)
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "runs" / "mine"
    line = one_line(fmnist_process(["evaluate", str(run), "--allow-unverified-data"], env=environment(),
                                   timeout=120))
    assert "'my-mlp'" in line and "import my_models" in line and "damaged" not in line

    # The report's Python snippet imports what registers the model, so it runs in a new process.
    report = (run / "report.md").read_text()
    snippet = re.search(r"From Python:\n\n```python\n(.*?)```", report, re.S).group(1)
    assert snippet.startswith("import my_models  # registers the model 'my-mlp'")
    again = subprocess.run([sys.executable, "-c", snippet], env=environment(code), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("name", ["", None, 3])
def test_register_model_refuses_a_name_that_is_not_one(name):
    import fmnist

    with pytest.raises(fmnist.ConfigError, match="register_model"):
        fmnist.register_model(name)
