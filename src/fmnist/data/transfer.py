"""Copying small host tensors (a batch's random draws) to the training device without waiting for it.

A plain `.to("cuda")` of a tensor in ordinary (pageable) host memory blocks the CPU until the GPU has
taken it, so a step that copies its augmentation's draws four times waits four times for the GPU to
catch up. From pinned (page-locked) memory, `non_blocking=True` only queues the copy on the GPU's
stream, behind the work already there, and the CPU goes on preparing the next batch.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`, queued without a host sync (as it is when it is there already)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()  # torch's pinned allocator keeps the block until the copy is done
    return tensor.to(device, non_blocking=True)
