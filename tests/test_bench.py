"""The benchmark runs both loops on the same model and reports figures (no timing thresholds)."""

from __future__ import annotations

import json

from fmnist.cli import main
from fmnist.tools.bench import LoadMeter, benchmark
from fmnist.training.config import TrainConfig


def test_bench_reports_both_loops_and_the_machine_load(tiny_data, capsys):
    code = main(["bench", "--data-dir", str(tiny_data), "--allow-unverified-data", "--steps", "3", "--warmup", "1",
                 "--batch-size", "32", "--val-size", "100", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("train_images_per_second", "conventional_train_images_per_second", "eval_images_per_second"):
        assert result[key] > 0
    assert result["speedup"] == result["train_images_per_second"] / result["conventional_train_images_per_second"]
    assert result["peak_memory_mib"] > 0 and result["batch_size"] == 32
    assert result["machine"]["cores"] >= 1


def test_load_meter_sees_no_negative_load():
    meter = LoadMeter().start()
    sum(range(100_000))
    load = meter.stop()
    assert load["other_processes_cores_busy"] is None or load["other_processes_cores_busy"] >= 0


def test_bench_rejects_bad_counts(capsys):
    assert main(["bench", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_bench_refuses_the_options_of_the_other_measurement(capsys):
    for arguments, flag in ((["--time-to-accuracy", "quick", "--steps", "10"], "--steps"),
                            (["--time-to-accuracy", "quick", "--warmup", "0"], "--warmup"),
                            (["--time-to-accuracy", "quick", "--no-conventional"], "--no-conventional"),
                            (["--time-to-accuracy", "quick", "--recipe", "fast"], "--recipe"),
                            (["--epochs", "3"], "--epochs"), (["--seeds", "2"], "--seeds")):
        assert main(["bench", *arguments]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag} applies to" in err


def test_time_to_accuracy_reports_each_threshold_per_seed(tiny_data, capsys):
    code = main(["bench", "--time-to-accuracy", "affine-steplr", "--epochs", "2", "--seeds", "2",
                 "--data-dir", str(tiny_data), "--allow-unverified-data", "--val-size", "100", "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    runs, summary = document["runs"], document["summary"]
    assert [run["seed"] for run in runs] == [42, 43] == summary["seeds"]
    for run in runs:
        assert [point["epoch"] for point in run["curve"]] == [1, 2]
        assert set(run["seconds_to_accuracy"]) == {"0.90", "0.91", "0.92", "0.93", "0.94", "0.95"}
        for threshold, seconds in run["seconds_to_accuracy"].items():
            reached = [p for p in run["curve"] if p["test_accuracy"] >= float(threshold)]
            # The time noted is the training time at the first epoch that reached the threshold.
            assert seconds == (reached[0]["train_seconds"] if reached else None)
        assert run["eval_seconds"] > 0 and run["train_seconds"] == run["curve"][-1]["train_seconds"]
    finals = [run["final_test_accuracy"] for run in runs]
    assert summary["final_test_accuracy"]["mean"] == sum(finals) / 2


def test_bench_refuses_what_a_run_on_its_device_refuses(tiny_data, capsys):
    """Both measurements take the device's settings as `fmnist train` does: fp16 and TF32 need CUDA."""
    data = ["--data-dir", str(tiny_data), "--allow-unverified-data", "--val-size", "100", "--device", "cpu"]
    for measurement in ([], ["--time-to-accuracy", "quick", "--epochs", "1"]):
        for options, named in ((["--amp", "fp16"], "--amp 'fp16': fp16 needs --device cuda"),
                               (["--no-tf32"], "--no-tf32: ignored"), (["--tf32"], "--tf32: ignored")):
            assert main(["bench", *measurement, *options, *data]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and named in err, err


def test_bench_times_the_loop_without_the_augmentation_it_was_given(tiny_data):
    """A config's augmentation, alternating flips too, is switched off for the timing as a whole (not refused
    option by option as the settings' leftovers)."""
    config = TrainConfig(data_dir=str(tiny_data), allow_unverified_data=True, batch_size=32, val_size=100,
                         hflip=True, alternate_flips=True, crop_padding=1, erase_prob=0.5)
    result = benchmark(config, warmup=0, steps=2, conventional=False)
    assert result["train_images_per_second"] > 0
