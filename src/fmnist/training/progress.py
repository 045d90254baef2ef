"""A progress bar that travels with the batches, so the training loop itself never draws anything."""

from __future__ import annotations

from collections.abc import Iterator

from tqdm import tqdm


class WithProgress:
    """Wrap batches so that each pass over them (one epoch) draws a tqdm bar on stderr.

    The loop functions take any iterable of batches; wrapping them is how a caller asks for a bar
    (`fmnist.train(config, progress=True)` and the CLI on a terminal do). `first_epoch` and
    `epochs` only label the bars.
    """

    def __init__(self, batches, epochs: int, first_epoch: int = 1):
        self.batches = batches
        self.epochs = epochs
        self.next_epoch = first_epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        label = f"epoch {self.next_epoch}/{self.epochs}"
        self.next_epoch += 1
        with tqdm(total=len(self.batches), desc=label, leave=False) as bar:
            for batch in self.batches:
                yield batch
                bar.update(1)
