"""fmnist: a fast, readable PyTorch lab for Fashion-MNIST."""

__version__ = "0.1.0"
