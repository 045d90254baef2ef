"""The model zoo. Importing this package registers every model family."""

from fmnist.models import affine_cnn  # noqa: F401  (registers its models)
from fmnist.models.registry import count_parameters, create_model, list_models, register_model

__all__ = ["count_parameters", "create_model", "list_models", "register_model"]
