"""Choosing the device, its precision and its speed-against-exactness settings, and seeding every random
number generator, once per run.

The accelerator's own calls (CUDA's generators and capability, MPS's generator) go through the small
`ACCELERATORS` table below, so that tests on a CPU can stand in for a GPU.
"""

from __future__ import annotations

import logging
import os
import platform
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.deterministic

from fmnist.arguments import CONFIG, invalid, setting

logger = logging.getLogger(__name__)

# Deterministic cuBLAS needs this workspace setting before its first handle is made, which is before
# fmnist's code runs for a user who touched CUDA first: so it is set when fmnist is imported (setdefault:
# a user's own value wins), and seed_everything warns when it came too late (see docs/gpu.md).
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
CUDA_TOUCHED_BEFORE_FMNIST = torch.cuda.is_initialized() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)

# Compute capability 8.0 (Ampere) and later multiply bf16 in hardware; torch.cuda.is_bf16_supported()
# also says yes to older GPUs that only emulate it, slower than float32.
NATIVE_BF16_CAPABILITY = (8, 0)
# TF32 tensor cores came with the same generation.
TF32_CAPABILITY = (8, 0)


def resolve_device(name: str, owner: str = CONFIG) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an explicit choice must be available.
    `owner` is the function whose argument `name` is, for the message (arguments.py)."""
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if isinstance(name, str) and name == "auto":
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


# ---------------------------------------------------------------- the accelerators' own calls (the seam)

class CudaCalls:
    """What fmnist asks CUDA: a GPU's generator, its capability and name, the software versions."""

    def device_index(self, device: torch.device) -> int:
        return device.index if device.index is not None else torch.cuda.current_device()

    def get_rng_state(self, index: int) -> torch.Tensor:
        return torch.cuda.get_rng_state(index)

    def set_rng_state(self, index: int, state: torch.Tensor) -> None:
        torch.cuda.set_rng_state(state, index)

    def capability(self, index: int) -> tuple[int, int]:
        return tuple(torch.cuda.get_device_capability(index))

    def describe(self, index: int) -> dict:
        properties = torch.cuda.get_device_properties(index)
        return {"name": properties.name, "compute_capability": ".".join(map(str, self.capability(index))),
                "memory_gib": round(properties.total_memory / 2**30, 1), "visible_gpus": torch.cuda.device_count(),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


class MpsCalls:
    """What fmnist asks Apple's MPS: its one generator, and the macOS version that bf16 needs."""

    def device_index(self, device: torch.device) -> int:
        return 0

    def get_rng_state(self, index: int) -> torch.Tensor:
        return torch.mps.get_rng_state()

    def set_rng_state(self, index: int, state: torch.Tensor) -> None:
        torch.mps.set_rng_state(state)

    def has_bf16(self) -> bool:
        return torch.backends.mps.is_macos_or_newer(14, 0)

    def describe(self, index: int) -> dict:
        return {"name": "Apple MPS", "macos": platform.mac_ver()[0]}


ACCELERATORS = {"cuda": CudaCalls(), "mps": MpsCalls()}


def accelerator_record(device: torch.device) -> dict | None:
    """The accelerator a run used and its software, for the run folder (None on the CPU): timings are
    only comparable on the same card."""
    calls = ACCELERATORS.get(device.type)
    return None if calls is None else calls.describe(calls.device_index(device))


# ---------------------------------------------------------------- precision

@dataclass(frozen=True)
class Precision:
    """The precision a run trains in, and why (`--amp auto` says what it chose in the run line)."""

    amp: str  # none, bf16 or fp16
    reason: str

    def describe(self) -> str:
        kind = "fp32" if self.amp == "none" else f"{self.amp} autocast"
        return f"{kind} ({self.reason})"


def cpu_has_bf16_matrix_instructions() -> bool:
    """AVX-512 BF16 or AMX: the instructions that make bf16 autocast faster than fp32 on a CPU (without
    them, bf16 is emulated and slower; BENCHMARKS.md)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def emulated_bf16_line(amp: str, device: torch.device, resumed: bool) -> str | None:
    """A line for a run in bf16 on a CPU that only emulates it (None otherwise): it works, but many times
    slower than fp32 (12x for fast-vgg on a 2-core Zen 3; BENCHMARKS.md), which whoever chose bf16 for speed
    should hear. A new run can train in fp32; a resumed one keeps the precision it started in (see
    docs/training.md), so only another machine makes it fast again."""
    if amp != "bf16" or device.type != "cpu" or cpu_has_bf16_matrix_instructions():
        return None
    line = ("bf16 is emulated on this CPU (it has neither AVX-512 BF16 nor AMX), so training runs many times "
            "slower than in fp32")
    if resumed:
        return (f"{line}; the run keeps the bf16 it started in so that it continues exactly (a CPU with AVX-512 BF16 "
                "or AMX resumes it at full speed)")
    return f"{line}; {setting('amp', 'auto')} or {setting('amp', 'none')} trains in fp32 here"


def choose_precision(mode: str, device: torch.device) -> Precision:
    """The precision `--amp mode` means on `device`: "auto" becomes bf16 where the hardware multiplies
    bf16 itself (then it is faster than fp32), else fp32."""
    if mode != "auto":
        return Precision(mode, f"--amp {mode}")
    if device.type == "cuda":
        calls = ACCELERATORS["cuda"]
        capability = calls.capability(calls.device_index(device))
        shown = ".".join(map(str, capability))
        if capability >= NATIVE_BF16_CAPABILITY:
            return Precision("bf16", f"auto: compute capability {shown} has native bf16")
        return Precision("none", f"auto: compute capability {shown} has no native bf16 (it would be emulated, "
                                 "slower than fp32); --amp fp16 is this GPU's fast precision")
    if device.type == "cpu":
        if cpu_has_bf16_matrix_instructions():
            return Precision("bf16", "auto: the CPU has bf16 matrix instructions")
        return Precision("none", "auto: the CPU has no bf16 matrix instructions")
    return Precision("none", f"auto: fp32 on {device.type}")


def resolve_amp(mode: str, device: torch.device) -> str:
    """The precision `--amp mode` means on `device`: see choose_precision."""
    return choose_precision(mode, device).amp


def check_precision(amp: str, device: torch.device) -> None:
    """Refuse a precision the device cannot train in, with one line."""
    if amp == "fp16" and device.type != "cuda":
        raise invalid("amp", "fp16", f"needs a CUDA device, and this run is on {device}; use "
                                     f"{setting('amp', 'bf16')} or {setting('amp', 'none')}", as_typed=True)
    if amp == "bf16" and device.type == "mps" and not ACCELERATORS["mps"].has_bf16():
        raise invalid("amp", "bf16", f"bf16 on Apple's MPS needs macOS 14 or later; use {setting('amp', 'none')}",
                      as_typed=True)


def tf32_applies(device: torch.device) -> bool:
    """Whether the device has TF32 tensor cores: CUDA GPUs of compute capability 8.0 and later."""
    if device.type != "cuda":
        return False
    calls = ACCELERATORS["cuda"]
    return calls.capability(calls.device_index(device)) >= TF32_CAPABILITY


def use_tf32(enabled: bool) -> None:
    """float32 matrix products and convolutions on CUDA in TF32 (a 10-bit mantissa, several times faster on
    tensor cores) or in full float32. CPUs are not affected."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def speed_settings_line(device: torch.device, deterministic: bool, tf32: bool | None) -> str:
    """What the run chose between speed and exactness on this device, for the run line ('' on a CPU run
    that is deterministic: nothing there is traded)."""
    parts = []
    if device.type == "cuda":
        parts.append("deterministic: cuDNN autotuning off (repeatable; --no-deterministic is faster)" if deterministic
                     else "not deterministic: cuDNN autotunes (faster, not repeatable)")
        if tf32_applies(device):
            parts.append("TF32 matmuls on (--no-tf32 for full fp32)" if tf32 else "TF32 off: full fp32")
    elif not deterministic:
        parts.append("not deterministic")
    return ", ".join(parts)


# ---------------------------------------------------------------- seeds and generator states

def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and every accelerator) so a run can be repeated exactly.

    `deterministic` also asks for deterministic algorithms (cuDNN's included); without it, cuDNN's
    autotuner picks the fastest algorithm by timing, which can differ between runs.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic and CUDA_TOUCHED_BEFORE_FMNIST and os.environ["CUBLAS_WORKSPACE_CONFIG"] == \
            CUBLAS_DETERMINISTIC_WORKSPACE:
        logger.warning("CUDA was in use before fmnist was imported, so cuBLAS may not be deterministic: set "
                       "CUBLAS_WORKSPACE_CONFIG=%s before the first CUDA call (docs/gpu.md)",
                       CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN (a debugging aid for kernels that read
    # memory they never wrote). fmnist's kernels write all they read, and the filling cost 15% of the
    # training rate of fast-cnn on a CPU (BENCHMARKS.md), so it is off: the results are the same.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def rng_state(device: torch.device) -> dict:
    """Every generator this process draws from, the run device's own included, as types that
    `torch.load(weights_only=True)` accepts. Other GPUs' generators are not the run's: not saved."""
    numpy_state = np.random.get_state()
    calls = ACCELERATORS.get(device.type)
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "device": None if calls is None else {"type": device.type,
                                              "state": calls.get_rng_state(calls.device_index(device))},
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what rng_state saved into this process's generators, the run device's into its own.

    A device generator saved on another kind of device is left alone (a resume that changed --device is
    not exact anyway). Checkpoints of fmnist 0.x before this format hold "cuda": one state per GPU that
    was visible; the run device's is the one at its index, if it was saved (else it is left as seeded).
    """
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
    calls = ACCELERATORS.get(device.type)
    if calls is None:
        return
    index = calls.device_index(device)
    saved = state.get("device")
    if saved is not None and saved["type"] == device.type:
        calls.set_rng_state(index, saved["state"])
    elif device.type == "cuda" and "device" not in state:  # the older format
        per_gpu = state.get("cuda") or []
        if index < len(per_gpu):
            calls.set_rng_state(index, per_gpu[index])
        else:
            logger.warning("the checkpoint holds no generator state for %s (%d GPU states saved); its random "
                           "draws continue from the seed, so this resume is not exact", device, len(per_gpu))
