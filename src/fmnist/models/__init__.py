"""The model zoo. Importing this package registers every model family."""

from fmnist.models import affine_cnn, batchnorm_study, fast_cnn, lenet, mlp, res_cnn, resnet, small_cnn  # noqa: F401
from fmnist.models.registry import (
    count_parameters,
    create_model,
    describe_model,
    has_batch_norm,
    list_models,
    parameter_count,
    register_model,
)
from fmnist.models.resnet import PRETRAINED_MODELS

__all__ = ["PRETRAINED_MODELS", "count_parameters", "create_model", "describe_model", "has_batch_norm", "list_models",
           "parameter_count", "register_model"]
