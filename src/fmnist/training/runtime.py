"""Choosing the device and seeding every random number generator, once per run."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.utils.deterministic

from fmnist.arguments import CONFIG, invalid, setting


def resolve_device(name: str, owner: str = CONFIG) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an explicit choice must be available.
    `owner` is the function whose argument `name` is, for the message (arguments.py)."""
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    device = known_device(name, owner)
    instead = f"use {setting('device', 'cpu')} or {setting('device', 'auto')}"
    if device.type == "cuda" and not cuda:
        raise invalid("device", name, f"no CUDA device is available here; {instead}", owner, as_typed=True)
    if device.type == "mps" and not mps:
        raise invalid("device", name, f"no Apple MPS device is available here; {instead}", owner, as_typed=True)
    return device


def known_device(name, owner: str = CONFIG) -> torch.device:
    """torch's device for a name such as 'cpu' or 'cuda:1'; anything else is a ConfigError, not torch's RuntimeError."""
    try:
        device = torch.device(name) if isinstance(name, str) else None
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise invalid("device", name, "not a device fmnist can use; choose auto, cpu, cuda or mps", owner)
    return device


def cpu_has_bf16_matrix_instructions() -> bool:
    """AVX-512 BF16 or AMX: the instructions that make bf16 autocast faster than fp32 on a CPU (without
    them, bf16 is emulated and slower; BENCHMARKS.md)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_amp(mode: str, device: torch.device) -> str:
    """The precision `--amp mode` means on `device`: "auto" becomes bf16 where it pays, else "none"."""
    if mode != "auto":
        return mode
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16_matrix_instructions() else "none"
    return "none"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run can be repeated exactly on the CPU.

    `deterministic` also asks for deterministic algorithms (cuDNN's included); without it, cuDNN's
    autotuner picks the fastest algorithm by timing, which can differ between runs.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN (a debugging aid for kernels that read
    # memory they never wrote). fmnist's kernels write all they read, and the filling cost 15% of the
    # training rate of fast-cnn on a CPU (BENCHMARKS.md), so it is off: the results are the same.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def rng_state() -> dict:
    """Every global generator's state, as types that `torch.load(weights_only=True)` accepts."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(item if not isinstance(item, list) else tuple(item) for item in state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
