"""Early stopping (`--patience N`, `--min-delta D`): end training when validation accuracy stops improving.

The decision is taken from the epochs' history alone, never from a counter kept on the side: a
resumed run's history comes from its checkpoint, so it stops after the same epoch as a run that
never stopped, and a run stopped just after its stopping epoch does not train another one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fmnist.errors import ConfigError


@dataclass(frozen=True)
class EarlyStopping:
    """Stop once `patience` epochs in a row have not raised the best validation accuracy by more than
    `min_delta` (as a fraction: 0.001 is a tenth of a percentage point). The epoch that is tested is
    still the best one by validation accuracy (best.pt), which may be a later, smaller improvement."""

    patience: int
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ConfigError(f"EarlyStopping(patience={self.patience!r}): must be a whole number of epochs, at "
                              "least 1", "patience")
        if (isinstance(self.min_delta, bool) or not isinstance(self.min_delta, (int, float))
                or not 0 <= self.min_delta < 1):
            raise ConfigError(f"EarlyStopping(min_delta={self.min_delta!r}): must be a number in [0, 1) "
                              "(accuracy is a fraction)", "min_delta")

    def epochs_without_improvement(self, history: list[dict]) -> tuple[int, dict | None]:
        """How many epochs since the last improvement, and the row that improved last."""
        best, best_row, waited = -math.inf, None, 0
        for row in history:
            if row["val_accuracy"] > best + self.min_delta:
                best, best_row, waited = row["val_accuracy"], row, 0
            else:
                waited += 1
        return waited, best_row

    def reason_to_stop(self, history: list[dict]) -> str | None:
        """None while training should go on; else why it stops, in words for the log and report.md."""
        waited, best_row = self.epochs_without_improvement(history)
        if best_row is None or waited < self.patience:
            return None
        by = f" by more than {self.min_delta:g}" if self.min_delta > 0 else ""
        epochs = "1 epoch" if waited == 1 else f"{waited} epochs"
        return (f"validation accuracy has not improved{by} for {epochs} (--patience {self.patience}; "
                f"{best_row['val_accuracy']:.4f} at epoch {best_row['epoch']})")
