"""MED-VT models: ``build_model`` from a named config, ``convert_original_state_dict`` for the
authors' checkpoints, ``load_checkpoint`` for files."""
from .config import MODEL_CONFIGS, MedVTConfig, get_config
from .convert import (CheckpointMismatchError, convert_original_state_dict, infer_model_version, load_checkpoint,
                      read_checkpoint)
from .medvt import MEDVT, build_model

__all__ = [
    "MODEL_CONFIGS", "MedVTConfig", "get_config", "MEDVT", "build_model", "convert_original_state_dict",
    "load_checkpoint", "read_checkpoint", "infer_model_version", "CheckpointMismatchError",
]
