"""MED-VT and MED-VT++ models: :func:`build_model` from a preset name (:data:`PRESETS`) or a config,
:func:`load_model` for a checkpoint file (config decided and reported, weights loaded strictly),
``convert_original_state_dict`` for the authors' MED-VT names, ``load_checkpoint`` into a built model."""
from .config import MODEL_CONFIGS, MedVTConfig, get_config
from .convert import (CheckpointMismatchError, convert_original_state_dict, infer_model_version, load_checkpoint,
                      read_checkpoint)
from .medvt import MEDVT
from .registry import PRESETS, LoadedModel, build_model, get_preset, load_model

__all__ = [
    "MODEL_CONFIGS", "PRESETS", "MedVTConfig", "get_config", "get_preset", "MEDVT", "build_model", "load_model",
    "LoadedModel", "convert_original_state_dict", "load_checkpoint", "read_checkpoint", "infer_model_version",
    "CheckpointMismatchError",
]
