"""Fashion-MNIST from disk to batches: find, verify, read, split, batch and augment."""
