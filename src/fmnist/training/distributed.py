"""One run on several processes: torchrun and DistributedDataParallel, kept out of the epoch loop.

    torchrun --nproc-per-node 2 -m fmnist train --recipe fast

torchrun starts one process per rank and gives each RANK, WORLD_SIZE and LOCAL_RANK. Without them
(a plain `fmnist train`) nothing here is used, and training is the one-process code as it reads.
Under torchrun, experiment.py adds around the same `fit`:

- a process group: NCCL on CUDA (process LOCAL_RANK on cuda:LOCAL_RANK), gloo on the CPU;
- batches (ShardedBatches): every process draws the same seeded permutation and builds the same
  global batch of --batch-size images, augmentation included, then trains on its 1/N slice. DDP
  averages the gradients, which gives the gradient of the whole batch: a recipe means the same at
  any N, and on the CPU the weights match one process up to float rounding;
- agreement: a signal reaches the processes at slightly different steps, so after each step they
  agree on stopping (AgreedStop); each epoch's training numbers are summed over the processes
  before rank 0 records them (DistributedRecorder);
- one writer: rank 0 alone creates, locks and writes the run folder, and tests and reports the
  best epoch at the end (on_main); an error there reaches every process (together, on_main);
- a process that dies (killed, out of memory) breaks the others' next message to it: they stop
  with one line (ProcessLost), not gloo's traceback, and the run folder resumes from its last epoch.
- an end: the group ends with the run, its threads joined, before the interpreter shuts down
  (import_before_the_group: what kept it alive, and how that aborted finished runs).

Validation runs on every process over the whole validation split with the same weights (DDP
keeps them equal; BatchNorm buffers come from rank 0), so its numbers are those of one process:
no gather, no padding, nothing to reconcile. It does not get faster with N; training does.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fmnist.arguments import invalid, named, setting
from fmnist.data.loader import TensorLoader
from fmnist.errors import FmnistError
from fmnist.faults import StopRequest, StopTraining, TrainingInterrupted
from fmnist.training.config import TrainConfig
from fmnist.training.loop import EpochRecorder
from fmnist.training.runtime import resolve_device, rng_state

Result = TypeVar("Result")


def launched_processes() -> int:
    """How many processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """This process's rank under torchrun (0 without torchrun): only rank 0 writes and prints."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class Processes:
    """This process's place among the processes of one run."""

    rank: int
    world_size: int
    device: torch.device
    messages: dist.ProcessGroup  # a gloo group for small CPU messages (stop flags, errors, results)
    run_path: Path | None = None  # the run folder, once rank 0 made it: for the "resume with" line

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main(group: Processes | None) -> bool:
    return group is None or group.is_main


@contextmanager
def join_processes(config: TrainConfig) -> Iterator[Processes | None]:
    """Join the run's process group when torchrun started several processes; yield None otherwise."""
    world_size = launched_processes()
    if world_size == 1:
        if config.sync_bn:
            raise invalid("sync_bn", True, "synchronizes BatchNorm across the processes of a torchrun run; this is "
                          "one process (start it with torchrun --nproc-per-node N, N >= 2)", as_typed=True)
        yield None
        return
    check_global_batch(config.batch_size, world_size)
    device = process_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    if config.sync_bn and device.type != "cuda":
        raise invalid("sync_bn", True, "SyncBatchNorm runs on CUDA only; on the CPU each process keeps its own "
                      f"BatchNorm statistics (drop {named('sync_bn')})", as_typed=True)
    created = not dist.is_initialized()
    if created:
        import_before_the_group()
        # NCCL for tensors between GPUs; gloo for everything on the CPU.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    processes = None
    try:
        messages = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        processes = Processes(dist.get_rank(), dist.get_world_size(), device, messages)
        yield processes
    except RuntimeError as error:
        if not lost_a_process(error):
            raise
        raise ProcessLost(process_lost_line(error), processes.run_path if processes else None) from None
    finally:
        if created:
            dist.destroy_process_group()


def import_before_the_group() -> None:
    """Import torch._dynamo before the process group exists, where DDP would import it after.

    DDP imports torch._dynamo on its first construction, and with it torch.distributed.nn.functional,
    whose functions take the default group as a default argument: imported while the group exists,
    they keep it alive after destroy_process_group, and with it gloo's worker threads, until the
    interpreter shuts down. A worker still letting go of the last collective's tensors then takes the
    GIL of an interpreter that is finalizing, and the process aborts ("terminate called without an
    active exception", SIGABRT) after a run that finished. Imported first, they hold no group, and the
    group ends (its threads joined) when the run lets go of it.
    """
    import torch._dynamo  # noqa: F401 - for its side effect; lazily, as only torchrun runs need it


class ProcessLost(FmnistError):
    """Another process of this torchrun run is gone: this one cannot go on alone. `run_path`: the run
    folder to resume, when training had begun."""

    def __init__(self, message: str, run_path: Path | None = None):
        super().__init__(message)
        self.run_path = run_path


# What gloo and NCCL say when the process at the other end of a connection has died.
LOST_PROCESS_SIGNS = ("closed by peer", "reset by peer", "broken pipe", "connection refused", "remote worker",
                      "remote process exited", "nccl communicator was aborted", "socket timeout")


def lost_a_process(error: RuntimeError) -> bool:
    """Whether this error is a collective that failed because another process went away."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(sign in text for sign in LOST_PROCESS_SIGNS)


def process_lost_line(error: RuntimeError) -> str:
    reason = next((sign for sign in LOST_PROCESS_SIGNS if sign in str(error).lower()), type(error).__name__)
    return (f"process {process_rank()} of {launched_processes()} lost touch with the others ({reason}): one of them "
            "stopped (killed, out of memory, or its own error above); the run folder keeps its last whole epoch")


def check_global_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise invalid("batch_size", batch_size, f"the global batch must divide evenly among the {world_size} "
                      f"processes (each trains on batch_size/{world_size}); use a multiple of {world_size}")


def process_device(name: str, local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is chosen (or `auto` finds it), else the CPU."""
    if name == "mps":
        raise invalid("device", name, "torchrun runs on CUDA (NCCL) or the CPU (gloo); use "
                      f"{setting('device', 'cuda')} or {setting('device', 'cpu')}", as_typed=True)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    resolve_device("cuda")  # the one-line error when there is none
    if local_rank >= torch.cuda.device_count():
        raise invalid("device", name, f"torchrun started process {local_rank} but there are "
                      f"{torch.cuda.device_count()} GPUs here; use --nproc-per-node {torch.cuda.device_count()}",
                      as_typed=True)
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def wrap_model(model: nn.Module, group: Processes, sync_bn: bool) -> DistributedDataParallel:
    """The model as DDP trains it. `.module` is the model itself: checkpoints save that."""
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[group.device.index] if group.device.type == "cuda" else None)


class ShardedBatches:
    """This process's slice of each global batch: the same permutation and augmentation on every
    process, so each image is drawn and augmented exactly as in one process."""

    def __init__(self, loader: TensorLoader, group: Processes):
        self.loader = loader
        self.rank = group.rank
        self.world_size = group.world_size

    def global_batch_sizes(self) -> list[int]:
        count, size = len(self.loader.split), self.loader.batch_size
        sizes = [min(size, count - index * size) for index in range(len(self.loader))]
        # A last global batch smaller than N would leave a process without images: leave it out,
        # as one process leaves out a last batch of one image.
        return sizes[:-1] if len(sizes) > 1 and sizes[-1] < self.world_size else sizes

    def images_per_epoch(self) -> int:
        """Images this process trains on per epoch."""
        return sum(len(range(size)[self.rank::self.world_size]) for size in self.global_batch_sizes())

    def __len__(self) -> int:
        return len(self.global_batch_sizes())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in itertools.islice(self.loader, len(self)):
            # Interleaved, so that shares differ by at most one image when a batch does not divide.
            shard = slice(self.rank, None, self.world_size)
            yield images[shard].contiguous(memory_format=torch.channels_last), labels[shard]


class AgreedStop:
    """A stop request that all processes see after the same step: stopped when any was signalled.

    The loop asks `requested` after every step; that is one all-reduce of one number per step,
    on the CPU, small next to a step's gradient all-reduce.
    """

    def __init__(self, local: StopRequest, group: Processes):
        self.local = local
        self.group = group

    @property
    def requested(self) -> bool:
        flag = torch.tensor([self.local.signal_number if self.local.requested else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group.messages)
        if flag.item() and not self.local.requested:
            self.local.signal_number = int(flag.item())
        return bool(flag.item())

    @property
    def signal_number(self) -> int:
        return self.local.signal_number


def agreed_stop(stop: StopRequest, group: Processes | None) -> StopRequest | AgreedStop:
    return stop if group is None else AgreedStop(stop, group)


class DistributedRecorder:
    """Records an epoch under torchrun: its training loss, accuracy and speed over all processes,
    then the row goes to rank 0's recorder (the run folder); the other ranks keep the history only."""

    def __init__(self, group: Processes, recorder: EpochRecorder | None, history: list[dict],
                 images_per_epoch: int):
        self.group = group
        self.recorder = recorder
        # Every process learns the run folder, so that any one left can say what resumes it.
        group.run_path = on_main(group, lambda: getattr(recorder, "path", None))
        self.own_history = list(history)
        self.images = images_per_epoch

    @property
    def history(self) -> list[dict]:
        return self.recorder.history if self.recorder is not None else self.own_history

    def end_epoch(self, row: dict, learning_rates: list[float], is_best: bool) -> None:
        sums = torch.tensor([row["train_loss"] * self.images, row["train_accuracy"] * self.images, self.images],
                            dtype=torch.float64)
        dist.all_reduce(sums, group=self.group.messages)
        seconds = torch.tensor([row["seconds"]], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX, group=self.group.messages)
        loss_sum, correct, images = sums.tolist()
        # fit logs this same row after recording it, so the log shows the whole batch's numbers too.
        row.update(train_loss=loss_sum / images, train_accuracy=correct / images, seconds=seconds.item(),
                   images_per_second=images / seconds.item() if seconds.item() > 0 else 0.0)
        # Each rank's generators (its own GPU's above all: dropout draws differ by slice) go into rank 0's
        # checkpoint, so that each rank resumes from its own, not rank 0's.
        states = [None] * self.group.world_size if self.group.is_main else None
        dist.gather_object(rng_state(self.group.device), states, dst=0, group=self.group.messages)
        if self.recorder is not None:
            self.recorder.rank_rng = states
        else:
            self.own_history.append(row)
        # Rank 0 records; its errors, and a callback's StopTraining, reach every process.
        on_main(self.group, lambda: self.recorder.end_epoch(row, learning_rates, is_best))


# Errors that every process re-raises when one raised them; anything else is a bug, passed on as such.
SHARED_ERRORS = (FmnistError, TrainingInterrupted, OSError, StopTraining)


def attempt(work: Callable[[], Result]) -> tuple[Result | None, BaseException | None]:
    """(result, None), or (None, the error) for any Exception."""
    try:
        return work(), None
    except Exception as error:
        return None, error


def transportable(error: BaseException) -> BaseException:
    """The error as the other processes raise it: itself if it is the user's to fix, else a RuntimeError."""
    return error if isinstance(error, SHARED_ERRORS) else RuntimeError(f"{type(error).__name__}: {error}")


def on_main(group: Processes | None, work: Callable[[], Result]) -> Result:
    """Run `work` on rank 0 only and give every process its result, or raise its error everywhere."""
    if group is None:
        return work()
    result, error = attempt(work) if group.is_main else (None, None)
    message = [(result, transportable(error) if error is not None else None)]
    dist.broadcast_object_list(message, src=0, group=group.messages)
    if error is not None:
        raise error  # rank 0 raises its own, with its traceback
    result, shared = message[0]
    if shared is not None:
        raise shared
    return result


def together(group: Processes | None, work: Callable[[], Result]) -> Result:
    """Run `work` on every process; if any fails, every process raises (the first failure, on the
    processes that did not fail themselves): no process is left waiting for the others."""
    if group is None:
        return work()
    result, error = attempt(work)
    errors = [None] * group.world_size
    dist.all_gather_object(errors, transportable(error) if error is not None else None, group=group.messages)
    if error is not None:
        raise error
    for rank, shared in enumerate(errors):
        if shared is not None:
            shared.args = (f"process {rank}: {shared}",) if isinstance(shared, FmnistError) else shared.args
            raise shared
    return result
