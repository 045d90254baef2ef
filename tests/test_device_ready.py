"""Ready for the GPU a user has, checked on a CPU: the accelerator's calls are stood in for through
runtime.ACCELERATORS, transfers are counted on the `meta` device, and compile is a stand-in with known
costs. tests/test_gpu.py runs the same promises on a real GPU (`pytest -m gpu`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from conftest import fmnist_here, fmnist_process, one_line, tiny_train_args, train_tiny_run, write_dataset
from fmnist.cli.main import main
from fmnist.data.augment import build_augmentation, build_mixing
from fmnist.data.loader import TensorLoader
from fmnist.data.splits import Split
from fmnist.errors import ConfigError
from fmnist.experiment import resume, train
from fmnist.models import create_model
from fmnist.runs import folder
from fmnist.runs.checkpoint import load_checkpoint, save_checkpoint
from fmnist.runs.resume import rank_generators
from fmnist.tools.lr_find import range_test_optimization
from fmnist.training import runtime
from fmnist.training.budget import TimePlan
from fmnist.training.build import build_ema
from fmnist.training.config import TrainConfig
from fmnist.training.loop import Optimization
from work_clock import BATCH_SECONDS, STEP_SECONDS, WorkClock


class FakeCuda:
    """Stands in for runtime.CudaCalls: `count` GPUs, each with a generator state and a capability."""

    def __init__(self, count: int, capabilities: dict[int, tuple[int, int]] | None = None, current: int = 0):
        self.states = {index: torch.full((16,), 100 + index, dtype=torch.uint8) for index in range(count)}
        self.capabilities = capabilities or {}
        self.current = current
        self.set_calls: list[int] = []

    def device_index(self, device: torch.device) -> int:
        return device.index if device.index is not None else self.current

    def get_rng_state(self, index: int) -> torch.Tensor:
        return self.states[index].clone()  # a KeyError, as torch's IndexError, for a GPU that is not there

    def set_rng_state(self, index: int, state: torch.Tensor) -> None:
        if index not in self.states:
            raise IndexError(f"no GPU {index}")
        self.states[index] = state.clone()
        self.set_calls.append(index)

    def capability(self, index: int) -> tuple[int, int]:
        return self.capabilities[index]

    def describe(self, index: int) -> dict:
        return {"name": f"Fake GPU {index}", "compute_capability": "8.0", "cuda": "13.0", "cudnn": 91000}


def with_gpus(monkeypatch, count: int, **options) -> FakeCuda:
    fake = FakeCuda(count, **options)
    monkeypatch.setitem(runtime.ACCELERATORS, "cuda", fake)
    return fake


def weights_only_round_trip(state: dict, tmp_path: Path) -> dict:
    torch.save(state, tmp_path / "state.pt")
    return torch.load(tmp_path / "state.pt", weights_only=True)


def cuda(index: int | None = None) -> torch.device:
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


# ---------------------------------------------------------------- generator states


def test_a_run_saves_its_own_gpus_generator_and_resumes_it_with_fewer_or_more_gpus(monkeypatch, tmp_path):
    saving = with_gpus(monkeypatch, 8)
    saved = weights_only_round_trip(runtime.rng_state(cuda(3)), tmp_path)  # a run on GPU 3 of 8
    assert torch.equal(saved["device"]["state"], saving.states[3]) and "cuda" not in saved

    for count, index in ((1, 0), (1, None), (16, 5)):  # fewer GPUs than saved, and more
        resuming = with_gpus(monkeypatch, count)
        runtime.set_rng_state(saved, cuda(index))
        restored = resuming.device_index(cuda(index))
        assert resuming.set_calls == [restored]  # the run device's own generator, and no other
        assert torch.equal(resuming.states[restored], saving.states[3])


def test_checkpoints_with_one_state_per_visible_gpu_still_resume_on_any_count(monkeypatch, caplog):
    # fmnist before issue 31 saved torch.cuda.get_rng_state_all(): one state per GPU visible then.
    old = runtime.rng_state(torch.device("cpu"))
    del old["device"]
    old["cuda"] = [torch.full((16,), index, dtype=torch.uint8) for index in range(8)]
    one_gpu = with_gpus(monkeypatch, 1)
    runtime.set_rng_state(old, cuda())
    assert one_gpu.set_calls == [0] and torch.equal(one_gpu.states[0], old["cuda"][0])

    old["cuda"] = old["cuda"][:1]  # saved with one GPU, resumed on GPU 2 of 3: nothing to restore there
    three = with_gpus(monkeypatch, 3)
    with caplog.at_level(logging.WARNING, logger="fmnist"):
        runtime.set_rng_state(old, cuda(2))
    assert three.set_calls == [] and "not exact" in caplog.text
    old["cuda"] = []  # a CPU run of the old format, resumed on a GPU
    runtime.set_rng_state(old, cuda(0))
    assert three.set_calls == []


def test_the_cpu_and_a_changed_device_leave_the_gpus_alone(monkeypatch):
    fake = with_gpus(monkeypatch, 2)
    on_cpu = runtime.rng_state(torch.device("cpu"))
    assert on_cpu["device"] is None
    runtime.set_rng_state(on_cpu, cuda(1))  # resumed on a GPU: the seeded generator stays
    runtime.set_rng_state(runtime.rng_state(cuda(1)), torch.device("cpu"))  # resumed on the CPU
    assert fake.set_calls == []


def test_mps_generator_is_saved_and_restored(monkeypatch):
    class FakeMps(FakeCuda):
        def device_index(self, device):
            return 0

    fake = FakeMps(1)
    monkeypatch.setitem(runtime.ACCELERATORS, "mps", fake)
    saved = runtime.rng_state(torch.device("mps"))
    assert saved["device"]["type"] == "mps"
    fake.states[0] = torch.zeros(16, dtype=torch.uint8)
    runtime.set_rng_state(saved, torch.device("mps"))
    assert torch.equal(fake.states[0], torch.full((16,), 100, dtype=torch.uint8))


def test_each_torchrun_rank_resumes_from_its_own_generators():
    rng = {"torch": "rank 0 (and one process)"}
    state = {"rng": rng, "rank_rng": [rng, {"torch": "rank 1"}]}
    assert rank_generators(state, 1) == {"torch": "rank 1"}
    assert rank_generators(state, 0) is rng
    assert rank_generators(state, 2) is rng  # resumed with more processes than saved
    assert rank_generators({"rng": rng}, 1) is rng  # saved by one process


def test_a_run_stopped_by_an_older_fmnist_resumes_exactly(tiny_data, tmp_path):
    reference = fmnist_here(tiny_train_args(tiny_data, tmp_path, "reference"))
    killed = fmnist_process(tiny_train_args(tiny_data, tmp_path, "old"), kill_at="write-metrics.csv:2")
    assert reference.returncode == 0 and killed.returncode == -signal.SIGKILL, killed.stderr
    last = tmp_path / "old" / "last.pt"
    state = load_checkpoint(last, for_resume=True)
    del state["rng"]["device"]
    state["rng"]["cuda"] = []  # the rng format of fmnist before issue 31, as a CPU run wrote it
    save_checkpoint(state, last)
    resumed = fmnist_here(["train", "--resume", str(tmp_path / "old")])
    assert resumed.returncode == 0, resumed.stderr
    for name in ("metrics.csv", "lr_steps.csv"):
        rows = [(tmp_path / run / name).read_text().splitlines() for run in ("old", "reference")]
        if name == "metrics.csv":  # all but the timing columns
            rows = [[line.split(",")[:6] for line in lines] for lines in rows]
        assert rows[0] == rows[1]
    weights = [load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("old", "reference")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


# ---------------------------------------------------------------- precision and speed settings


def test_auto_precision_asks_the_run_devices_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: pytest.fail("counts emulated bf16"))
    with_gpus(monkeypatch, 2, capabilities={0: (7, 0), 1: (8, 6)}, current=0)
    volta, ampere = runtime.choose_precision("auto", cuda(0)), runtime.choose_precision("auto", cuda(1))
    assert volta.amp == "none" and "7.0 has no native bf16" in volta.reason
    assert ampere.amp == "bf16" and "8.6 has native bf16" in ampere.reason
    assert runtime.choose_precision("auto", cuda()).amp == "none"  # "cuda" is the current GPU, 0 here
    assert runtime.choose_precision("fp16", cuda(0)) == runtime.Precision("fp16", "--amp fp16")
    assert runtime.resolve_amp("auto", cuda(1)) == "bf16"
    assert runtime.choose_precision("auto", torch.device("mps")).amp == "none"
    # What the run line says about speed against exactness on each card.
    assert "TF32" not in runtime.speed_settings_line(cuda(0), True, True)
    assert "cuDNN autotuning off" in runtime.speed_settings_line(cuda(0), True, True)
    assert "TF32 matmuls on" in runtime.speed_settings_line(cuda(1), False, True)
    assert "cuDNN autotunes" in runtime.speed_settings_line(cuda(1), False, True)
    assert runtime.speed_settings_line(torch.device("cpu"), True, None) == ""


def test_bf16_on_mps_needs_macos_14_and_fp16_needs_cuda(monkeypatch):
    class OldMacOS:
        def has_bf16(self) -> bool:
            return False

    monkeypatch.setitem(runtime.ACCELERATORS, "mps", OldMacOS())
    with pytest.raises(ConfigError, match=r"TrainConfig\(amp='bf16'\): bf16 on Apple's MPS needs macOS 14"):
        runtime.check_precision("bf16", torch.device("mps"))
    with pytest.raises(ConfigError, match=r"TrainConfig\(amp='fp16'\): needs a CUDA device"):
        runtime.check_precision("fp16", torch.device("mps"))
    runtime.check_precision("bf16", torch.device("cpu"))


def test_tf32_is_a_setting_of_cuda_runs(tiny_data):
    assert TrainConfig().tf32 is True and TrainConfig(tf32=False).tf32 is False
    assert TrainConfig(device="cpu").tf32 is None  # not used there, and recorded so
    with pytest.raises(ConfigError,
                       match=r"TrainConfig\(tf32=False\): ignored by these settings: TF32 is a CUDA GPU's"):
        TrainConfig(device="cpu", tf32=False)


def test_the_run_line_says_what_auto_chose_and_why_and_the_folder_names_the_accelerator(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fmnist"):
        run = train_tiny_run(tmp_path, "line", limit_batches=2)
    line = next(record.getMessage() for record in caplog.records if record.getMessage().startswith("run: "))
    assert "on cpu, " in line and "(auto: the CPU has" in line and "bf16 matrix instructions)" in line
    environment = json.loads((run / "config.json").read_text())["environment"]
    assert environment["accelerator"] is None  # a CPU run
    assert json.loads((run / "config.json").read_text())["resolved"]["amp_reason"].startswith("auto: the CPU")


EMULATED = "bf16 is emulated on this CPU (it has neither AVX-512 BF16 nor AMX), so training runs many times slower"


@pytest.mark.parametrize("has_bf16", [True, False], ids=["bf16-CPU", "emulating-CPU"])
@pytest.mark.parametrize("amp", ["none", "auto", "bf16"])
def test_bf16_on_a_cpu_that_only_emulates_it_is_said_with_the_option_that_trains_fast(amp, has_bf16, tmp_path,
                                                                                      monkeypatch):
    """bf16 on a CPU without bf16 instructions trains, 12x slower than fp32 on a Zen 3: a line says so, and
    only then (auto never chooses it there)."""
    monkeypatch.setattr(runtime, "cpu_has_bf16_matrix_instructions", lambda: has_bf16)
    data = write_dataset(tmp_path / "data")
    result = fmnist_here([*tiny_train_args(data, tmp_path, "r", epochs=1), "--amp", amp, "--no-report"])
    assert result.returncode == 0, result.stderr
    said = [line for line in (result.stdout + result.stderr).splitlines() if EMULATED in line]
    trains_in = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]["amp"]
    assert trains_in == ("bf16" if amp == "bf16" or (amp == "auto" and has_bf16) else "none")
    if amp == "bf16" and not has_bf16:
        assert said == [f"{EMULATED} than in fp32; --amp auto or --amp none trains in fp32 here"], said
    else:
        assert said == []


@pytest.mark.parametrize(("started_on", "resumed_on"), [(True, False), (False, True), (True, True)],
                         ids=["bf16-run-resumed-where-emulated", "fp32-run-resumed-on-bf16-CPU", "both-bf16-CPUs"])
def test_a_run_resumed_on_a_cpu_that_emulates_its_bf16_says_it_keeps_bf16(started_on, resumed_on, tmp_path,
                                                                          monkeypatch, caplog):
    """--amp auto chose at the start; a resume keeps that choice on any machine, and says what it costs there."""
    def crash(row: dict) -> None:
        raise RuntimeError("the machine went away")

    config = TrainConfig(epochs=2, batch_size=50, limit_batches=2, val_size=100, device="cpu", report=False,
                         data_dir=str(write_dataset(tmp_path / "data")), allow_unverified_data=True,
                         out=str(tmp_path / "runs"), name="moved")
    monkeypatch.setattr(runtime, "cpu_has_bf16_matrix_instructions", lambda: started_on)
    with pytest.raises(RuntimeError, match="went away"):
        train(config, after_epoch=crash)
    monkeypatch.setattr(runtime, "cpu_has_bf16_matrix_instructions", lambda: resumed_on)
    with caplog.at_level(logging.INFO, logger="fmnist"):
        resumed = resume(tmp_path / "runs" / "moved")
    assert json.loads((resumed.path / "config.json").read_text())["resolved"]["amp"] == ("bf16" if started_on
                                                                                        else "none")
    said = [(record.levelno, record.getMessage()) for record in caplog.records if EMULATED in record.getMessage()]
    if started_on and not resumed_on:
        assert said == [(logging.WARNING, f"{EMULATED} than in fp32; the run keeps the bf16 it started in so that "
                                          "it continues exactly (a CPU with AVX-512 BF16 or AMX resumes it at full "
                                          "speed)")]
    else:
        assert said == []


def test_the_run_folder_records_the_gpu_and_its_software(monkeypatch):
    with_gpus(monkeypatch, 2)
    record = folder.environment(cuda(1))["accelerator"]
    assert record["name"] == "Fake GPU 1" and {"compute_capability", "cuda", "cudnn"} <= record.keys()


# ---------------------------------------------------------------- no host syncs in a step


@pytest.fixture
def blocking_copies(monkeypatch) -> dict:
    """Counts Tensor.to calls that move a tensor to another device: blocking ones, and queued ones."""
    counts = {"blocking": 0, "queued": 0}
    original = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device != self.device:
            counts["queued" if non_blocking else "blocking"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    return counts


def test_augmented_and_mixed_batches_reach_the_device_without_a_blocking_copy(blocking_copies):
    # `meta` stands in for a GPU: tensors there have shapes but no data, and copies to it are counted.
    images = torch.randint(0, 256, (128, 28, 28), dtype=torch.uint8)
    split = Split(images.to("meta"), torch.randint(0, 10, (128,)).to("meta"))  # Split.to takes real devices only
    blocking_copies.update(blocking=0, queued=0)  # the data set's one move to the device is not a step's
    every_augmentation = build_augmentation(rotate_degrees=10, hflip=True, crop_padding=2, erase_prob=0.5,
                                            mean=0.286, std=0.353)
    for mix in (build_mixing(0.2, None), build_mixing(None, 1.0)):
        loader = TensorLoader(split, 32, shuffle=True, augment=every_augmentation, mix=mix)
        batches = list(loader)
        assert len(batches) == 4 and all(images.device.type == "meta" for images, _ in batches)
    assert blocking_copies["blocking"] == 0
    assert blocking_copies["queued"] >= 4 * 5  # the draws did travel: queued behind the device's work


def test_the_moving_average_updates_without_copies_and_as_torch_computes_it(blocking_copies):
    on_meta = create_model("fast-cnn-16").to("meta")
    ema = build_ema(on_meta, decay=0.9)
    blocking_copies.update(blocking=0, queued=0)  # moving the model there was the set-up, not a step
    for _ in range(3):
        ema.update_parameters(on_meta)
    assert blocking_copies["blocking"] == 0 and blocking_copies["queued"] == 0
    assert int(ema.n_averaged) == 3 and ema.n_averaged.device.type == "cpu"  # read for free

    torch.manual_seed(0)
    model = create_model("fast-cnn-16")
    ours, torchs = build_ema(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9),
                                                         use_buffers=True)
    for step in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * (step + 1))
        model(torch.randn(4, 1, 28, 28))  # BatchNorm statistics move too
        ours.update_parameters(model)
        torchs.update_parameters(model)
    for mine, reference in zip(ours.state_dict().values(), torchs.state_dict().values(), strict=True):
        assert torch.equal(mine, reference)


# ---------------------------------------------------------------- lr-find keeps the run's optimization


def test_the_range_test_keeps_the_grad_scaler_and_everything_but_the_schedule():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    optimization = Optimization(nn.CrossEntropyLoss(), optimizer, clip_grad_norm=1.0, autocast=torch.float16,
                                grad_scaler=torch.amp.GradScaler("cpu"), ema=build_ema(model, 0.9))
    sweep = range_test_optimization(optimization, growth=2.0)
    assert sweep.grad_scaler is optimization.grad_scaler  # small fp16 gradients stay above zero
    changed = {"scheduler", "scheduler_interval", "ema"}
    for field in dataclasses.fields(Optimization):
        if field.name not in changed:
            assert getattr(sweep, field.name) is getattr(optimization, field.name), field.name
    assert sweep.ema is None and sweep.scheduler_interval == "batch"
    rates = []
    for _ in range(3):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sweep.scheduler.step()
    assert rates == pytest.approx([1e-3, 2e-3, 4e-3])


# ---------------------------------------------------------------- a time budget with --compile

COMPILE_SECONDS = 1.0  # what the stand-in compiler costs at its first call
COMPILED_FORWARD_SECONDS = 0.01  # and each forward pass, training or evaluating


class StandInCompiled(nn.Module):
    """What torch.compile returns, with known costs on the work clock (work_clock.py): the first forward
    pass compiles, each one takes COMPILED_FORWARD_SECONDS; the parameters are the original model's, as
    torch.compile's are."""

    def __init__(self, model: nn.Module, clock: WorkClock):
        super().__init__()
        self.model = model
        self.clock = clock
        self.compiled = False

    def forward(self, images):
        if not self.compiled:
            self.clock.now += COMPILE_SECONDS
            self.compiled = True
        self.clock.now += COMPILED_FORWARD_SECONDS
        return self.model(images)


def test_a_budgeted_compile_run_plans_its_compilation_and_the_compiled_speed(tiny_data, tmp_path, monkeypatch,
                                                                              work_clock):
    compiled = []
    monkeypatch.setattr(torch, "compile",
                        lambda model, **options: compiled.append(model) or StandInCompiled(model, work_clock))
    config = TrainConfig(model="mlp", time_budget="10s", compile=True, batch_size=50, val_size=100,
                         eval_batch_size=40, device="cpu", data_dir=str(tiny_data), allow_unverified_data=True,
                         out=str(tmp_path), name="compiled")
    result = train(config)
    saved = json.loads((result.path / "config.json").read_text())
    plan = TimePlan.from_dict(saved["resolved"]["time_plan"])
    assert len(compiled) == 2  # the planner's probe and the run: each compiles
    # Compiling is measured apart from the steps and batches warmed up with it, and counted against the
    # budget, beside the measuring...
    assert plan.compile_seconds == pytest.approx(COMPILE_SECONDS)
    assert plan.planned_seconds() <= plan.budget_seconds
    assert plan.planned_seconds() >= plan.measure_seconds + plan.compile_seconds
    # ... with the steps and the validation timed at the compiled speed (3 batches of 40).
    assert plan.step_seconds == pytest.approx(STEP_SECONDS + COMPILED_FORWARD_SECONDS)
    assert plan.epoch_end_seconds == pytest.approx(3 * (BATCH_SECONDS + COMPILED_FORWARD_SECONDS))
    steps = (result.path / "lr_steps.csv").read_text().strip().splitlines()[1:]
    summary = json.loads((result.path / "summary.json").read_text())
    assert len(steps) == summary["trained_steps"]  # planned again at each epoch's end, from the compiled speed
    assert summary["replans"][0]["step_seconds"] == pytest.approx(STEP_SECONDS + COMPILED_FORWARD_SECONDS)
    assert 0.95 * 10 <= summary["budget_used_seconds"] <= 10
    # Plans saved before compile time was planned have none: they resume as they were.
    older = {key: value for key, value in saved["resolved"]["time_plan"].items() if key != "compile_seconds"}
    assert TimePlan.from_dict(older).compile_seconds == 0.0


# ---------------------------------------------------------------- predict and serve choose their device


def test_predict_and_serve_take_a_device(tmp_path, capsys):
    from PIL import Image

    run = train_tiny_run(tmp_path, "served", limit_batches=2)
    image = tmp_path / "shirt.png"
    Image.new("L", (28, 28), 200).save(image)
    assert main(["predict", str(run), str(image), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
    if not torch.cuda.is_available():
        for command in (["predict", str(run), str(image)], ["serve", str(run), "--port", "0"]):
            result = fmnist_process([*command, "--device", "cuda"], timeout=120)
            assert "--device cuda: no CUDA device is available here" in one_line(result)
