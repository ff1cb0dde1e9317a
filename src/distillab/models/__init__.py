"""The model zoo: importing this package registers every model in :data:`MODELS`."""

from distillab.models.base import (MODELS, FeatureStage, LoadedModel, ZooModel, count_parameters, create_model,
                                   load_model, load_state_dict_compat, model_file, model_kind)
from distillab.models import (cifar_resnet, generators, gpt, hf, mobilenetv2, resnet_cifar_bottleneck,  # noqa: F401
                              shufflenetv1, shufflenetv2, small, vgg, wrn)

__all__ = ["MODELS", "FeatureStage", "LoadedModel", "ZooModel", "count_parameters", "create_model", "load_model",
           "load_state_dict_compat", "model_file", "model_kind"]
