"""Every model preset of both families by one name, and the one way to load a checkpoint file.

MED-VT presets (:data:`models.config.MODEL_CONFIGS`: AVOS, A2D, VSS, ``tiny``) and MED-VT++ presets
(:data:`models.avs_config.AVS_CONFIGS`: S4, MS3, ``avs_tiny``) share one name space, :data:`PRESETS`;
:func:`build_model` builds any of them, or any config of either family.

:func:`load_model` decides a checkpoint's config and says how, in this order:

1. the checkpoint's own ``config`` (every checkpoint this project writes records it);
2. otherwise (an authors' file) the ``preset`` the caller names, with the original's saved training
   arguments mapped onto it through the family's table (:data:`SAVED_ARG_FIELDS`);
3. then the caller's ``overrides`` (command-line flags that were given; None means not given).

The weights are converted from the authors' names when needed and loaded strictly: a mismatch
names the missing, unexpected and mis-shaped keys, and non-finite weights are refused.

:func:`init_weights` gives a new MED-VT training run its initial weights (the pretrained files of
the original recipes, or any MED-VT checkpoint), the same in the AVOS, VSS and A2D trainers.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from utils.cli import UserError, require_file

from .avs import MEDVTPlusPlus
from .avs_config import AVS_CONFIGS, AVSConfig, get_avs_config
from .avs_convert import avs_state_dict, is_original_avs_state_dict
from .config import MODEL_CONFIGS, MedVTConfig, preset_name
from .backbone import load_swin_pretrained
from .convert import (CheckpointMismatchError, check_fits, checkpoint_state_dict, convert_original_state_dict,
                      init_from_checkpoint, init_from_vistr_coco, load_state_dict_strict, pretrained_file,
                      read_checkpoint)
from .medvt import MEDVT

ModelConfig = MedVTConfig | AVSConfig

PRESETS: dict[str, ModelConfig] = {**MODEL_CONFIGS, **AVS_CONFIGS}
assert len(PRESETS) == len(MODEL_CONFIGS) + len(AVS_CONFIGS), "a preset name is used by both families"

# The authors' training arguments that set a config field, per family (the MED-VT++ releases are
# bare state dicts without arguments).
SAVED_ARG_FIELDS: dict[type, dict[str, type]] = {
    MedVTConfig: {"query_decoder_scales": int, "lprop_mode": int, "lprop_scale": float, "dim_feedforward": int,
                  "dec_layers": int, "num_queries": int, "num_classes": int},
    AVSConfig: {},
}


def get_preset(name: str) -> ModelConfig:
    """The named preset of either family (a former name too, :data:`models.config.PRESET_ALIASES`);
    the error lists every name."""
    try:
        return PRESETS[preset_name(name)]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None


def config_from_dict(d: dict) -> ModelConfig:
    """A config saved with ``to_dict()`` (MED-VT++ configs are the ones with an audio width)."""
    return get_avs_config(d) if "audio_dim" in d else MedVTConfig.from_dict(d)


def build_model(config: str | ModelConfig | dict, **overrides) -> nn.Module:
    """A MED-VT or MED-VT++ model from a preset name, a config or a saved config dict."""
    cfg = get_preset(config) if isinstance(config, str) else config
    cfg = config_from_dict(cfg) if isinstance(cfg, dict) else cfg
    if overrides:
        cfg = replace(cfg, **overrides)
    return MEDVTPlusPlus(cfg) if isinstance(cfg, AVSConfig) else MEDVT(cfg)


def saved_args(ckpt: dict) -> dict:
    """The training arguments a checkpoint saved (``args``: a Namespace or a dict), else {}."""
    saved = ckpt.get("args")
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    return saved if isinstance(saved, dict) else {}


def saved_arg_changes(ckpt: dict, cfg: ModelConfig) -> dict:
    """Config fields set by the original's saved training arguments (``ckpt["args"]``), checked as a
    config read from a file is (:meth:`MedVTConfig.from_dict`): a file's arguments are untrusted too."""
    saved = saved_args(ckpt)
    changes = {}
    for k, t in SAVED_ARG_FIELDS[type(cfg)].items():
        if saved.get(k) is None:
            continue
        try:
            value = t(saved[k])
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"the checkpoint's saved training argument {k} is {saved[k]!r:.60}, not a "
                            f"{t.__name__}") from None
        if value != getattr(cfg, k):
            changes[k] = value
    if changes:
        try:
            config_from_dict({**cfg.to_dict(), **changes})  # refuses what no model should be built with
        except UserError as e:
            raise UserError(f"{e} (set by its saved training arguments {', '.join(changes)})") from None
    return changes


def resolve_config(ckpt: dict, preset: str | ModelConfig | None = None, *, source: str | None = None,
                   **overrides) -> tuple[ModelConfig, str]:
    """(config, a sentence saying how it was decided) for a checkpoint dict; see the module docstring.
    ``source`` (the file, or its flag and path) prefixes the refusal of a damaged config or saved arguments."""
    own = ckpt.get("config")
    try:
        if isinstance(own, dict):
            cfg, reason = config_from_dict(own), "the checkpoint's own config"
        elif preset is not None:
            cfg = get_preset(preset) if isinstance(preset, str) else preset
            name = preset if isinstance(preset, str) else getattr(cfg, "name", type(cfg).__name__)
            changes = saved_arg_changes(ckpt, cfg)
            reason = f"preset {name}" + (f" with the original's saved arguments {changes}" if changes else "")
            cfg = replace(cfg, **changes)
        else:
            raise UserError("the checkpoint records no model config (an authors' file?): name its preset")
    except UserError as e:
        if source is None:
            raise
        raise UserError(f"{source}: {e}") from None
    known = {f.name for f in fields(cfg)}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in known)
    if unknown:
        raise UserError(f"{', '.join(unknown)} cannot be set on a {type(cfg).__name__}")
    given = {k: v for k, v in overrides.items() if v is not None and getattr(cfg, k) != v}
    if given:
        cfg = replace(cfg, **given)
        reason += "; " + ", ".join(f"{k} {v}" for k, v in given.items()) + " as given"
    return cfg, reason


def model_state_dict(ckpt: dict, cfg: ModelConfig, source: str = "the checkpoint") -> dict[str, Tensor]:
    """The checkpoint's weights in our names (the authors' files are renamed); ``source`` names the file."""
    sd = checkpoint_state_dict(ckpt, source)
    return avs_state_dict(sd) if isinstance(cfg, AVSConfig) else convert_original_state_dict(sd, cfg)


@functools.lru_cache(maxsize=32)
def _meta_state(cfg: ModelConfig) -> dict[str, Tensor]:
    """``cfg``'s state dict built on the meta device (names, shapes and dtypes; no memory, no initialisation);
    kept per config (configs are frozen), since every preset is built for each file checked."""
    with torch.device("meta"):
        return build_model(cfg).state_dict()


@functools.lru_cache(maxsize=32)
def _meta_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of ``cfg``'s weights (:func:`_meta_state`)."""
    return {k: tuple(v.shape) for k, v in _meta_state(cfg).items()}


def _class_count(own: dict[str, tuple], shapes: dict[str, tuple], num_classes: int | None) -> int | None:
    """The one class count ``shapes`` has where ``own`` (a model of ``num_classes`` classes) differs from
    it only in the class dimensions; else None."""
    if num_classes is None or own.keys() != shapes.keys():
        return None
    seen = set()
    for k in own:
        a, b = own[k], shapes[k]
        if a == b:
            continue
        if len(a) != len(b) or any(x != y and x != num_classes for x, y in zip(a, b)):
            return None
        seen |= {y for x, y in zip(a, b) if x != y}
    return seen.pop() if len(seen) == 1 else None


def fitting_presets(state_dict: dict[str, Tensor]) -> list[tuple[str, ModelConfig]]:
    """(name, config) of the presets whose weights have exactly these names and shapes, also at another
    class count (the config then says it); about a second for all of them."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    found = []
    for name, cfg in PRESETS.items():
        own = _meta_shapes(cfg)
        if own == shapes:
            found.append((name, cfg))
            continue
        k = _class_count(own, shapes, getattr(cfg, "num_classes", None))
        if k is not None and _meta_shapes(replace(cfg, num_classes=k)) == shapes:
            found.append((name, replace(cfg, num_classes=k)))
    return found


def bare_state_dict_error(ckpt: dict, source: str) -> CheckpointMismatchError | None:
    """For a file whose weights did not fit the model built for it: when it records no config but its
    weights fit a preset (a ``state_dict()`` saved on its own), the error that says how to save it so
    that it loads; else None."""
    if isinstance(ckpt.get("config"), dict):
        return None
    fits = fitting_presets(checkpoint_state_dict(ckpt, source))
    if not fits:
        return None
    name, cfg = fits[0]
    classes = getattr(cfg, "num_classes", None)
    changed = classes is not None and classes != getattr(PRESETS[name], "num_classes", None)
    described = " / ".join(n + (f" with {c.num_classes} classes" if changed else "") for n, c in fits)
    config = f"get_preset('{name}')" + (f".replace(num_classes={classes})" if changed else "")
    return CheckpointMismatchError(
        f"{source} records no model config, so it was read as an authors' release, whose model its weights do not "
        f"fit; they fit preset {described} (a state_dict saved on its own?). Save it with its config, as the "
        f"training scripts do: torch.save({{'model': weights, 'config': {config}.to_dict()}}, path) (get_preset "
        "from models.registry), and give that file")


def _fitting_state_dict(own: dict[str, Tensor], ckpt: dict, cfg: ModelConfig, source: str) -> dict[str, Tensor]:
    """The checkpoint's weights in our names, refused unless they fit ``own`` (the state dict of ``cfg``'s
    model, real or on the meta device): the list of keys, or for a state dict saved without its config that
    fits another preset :func:`bare_state_dict_error`'s advice."""
    sd = model_state_dict(ckpt, cfg, source)
    try:
        check_fits(own, sd, source, (MEDVTPlusPlus if isinstance(cfg, AVSConfig) else MEDVT).__name__)
    except CheckpointMismatchError:
        kind = pretrained_file(ckpt.get("model", ckpt))
        if kind is not None:  # a backbone's file (flags swapped): the list of every key would not say it
            raise CheckpointMismatchError(f"{source} holds {kind}") from None
        bare = bare_state_dict_error(ckpt, source)
        if bare is not None:
            raise bare from None
        raise
    return sd


def load_weights(model: nn.Module, ckpt: dict, cfg: ModelConfig, source: str) -> None:
    """Load a checkpoint dict's weights into ``model`` (built from ``cfg``) strictly, renamed from the
    authors' names when needed (:func:`_fitting_state_dict` says what does not fit)."""
    load_state_dict_strict(model, _fitting_state_dict(model.state_dict(), ckpt, cfg, source), source=source)


def build_loaded(ckpt: dict, cfg: ModelConfig, source: str) -> nn.Module:
    """``cfg``'s model with the checkpoint's weights. They are compared with the model built on the meta
    device first, so a file whose config asks for other sizes than its weights have (damaged, or made to
    exhaust memory: a 4e8-wide FFN is 76.8 GB) is refused by its keys and shapes before anything is
    allocated; then the model is built and loaded strictly (:func:`load_weights`)."""
    _fitting_state_dict(_meta_state(cfg), ckpt, cfg, source)
    model = build_model(cfg)
    load_weights(model, ckpt, cfg, source)
    return model


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    reason: str  # how the config was decided
    checkpoint: dict  # the file's dict (its "args", "epoch", ...)


def load_model(path: str | Path, preset: str | ModelConfig | None = None, device: str | torch.device = "cpu", *,
               checkpoint: dict | None = None, **overrides) -> LoadedModel:
    """Read ``path`` safely (``checkpoint``: the caller has read it already), decide its config
    (:func:`resolve_config`), build and load it strictly."""
    ckpt = read_checkpoint(path) if checkpoint is None else checkpoint
    cfg, reason = resolve_config(ckpt, preset, source=str(path), **overrides)
    try:
        model = build_loaded(ckpt, cfg, str(path))
    except CheckpointMismatchError:
        flags = flags_do_not_fit(overrides, resolve_config(ckpt, preset)[0], str(path))
        if flags is None:
            raise
        raise flags from None
    return LoadedModel(model.to(device).eval(), cfg, reason, ckpt)


def flags_do_not_fit(flags: dict, recorded: ModelConfig, source: str) -> CheckpointMismatchError | None:
    """For weights that did not fit the model built with ``flags`` (config fields given on the command line;
    None: not given): the one-line error naming the flags that changed ``recorded`` (the model the file
    describes without them), since the list of mis-shaped keys does not; None when no flag changed it."""
    changed = [f"--{k} {v} (the file's model has {getattr(recorded, k)})" for k, v in flags.items()
               if v is not None and getattr(recorded, k, v) != v]
    if not changed:
        return None
    return CheckpointMismatchError(f"{', '.join(changed)}: the weights of {source} do not fit the model these "
                                   "flags make; leave them out")


@contextlib.contextmanager
def _named_by(flag: str):
    """A refused file of an initial-weights flag is named by the flag too (the refusals name its path;
    each task has its own flag for the same file)."""
    try:
        yield
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{flag} {e}") from None


def init_weights(model: MEDVT, log, swin: tuple[str, str | None], vistr: tuple[str, str | None],
                 init_from: str | None) -> None:
    """A new run's initial weights, in the original recipes' order: a Video Swin Kinetics file into
    the backbone, VisTR's COCO transformer, then any MED-VT checkpoint (``--init_from``: every entry
    whose name and shape fit). ``swin`` and ``vistr`` are (flag, path or None): each task names its
    flags, and a missing or misplaced file is refused by that name. What each file gave goes to
    ``log`` (a logger or :class:`utils.logger.DeferredLog`)."""
    flag, path = swin
    if path:
        if model.cfg.backbone != "swin":
            raise UserError(f"{flag} is a Video Swin file, but this model's backbone is {model.cfg.backbone}")
        with _named_by(flag):
            missing = load_swin_pretrained(model.backbone, str(require_file(path, flag)))
        log.info(f"backbone from {path} ({len(missing)} entries left at init)")
    flag, path = vistr
    if path:
        with _named_by(flag):
            loaded = init_from_vistr_coco(model, require_file(path, flag))
        log.info(f"{len(loaded)} tensors from {path} (FFN matrices sliced to {model.cfg.dim_feedforward})")
    if init_from:
        from .tasks import checkpoint_task  # (models.tasks reads saved_args from this module)

        ckpt = read_checkpoint(require_file(init_from, "--init_from"))
        weights = ckpt.get("model", ckpt)
        avs = checkpoint_task(ckpt, f"--init_from {init_from}") == "avs" or (  # or a bare state dict of one:
            isinstance(weights, dict) and (is_original_avs_state_dict(weights)  # the authors' names, or ours
                                           or any(str(k).startswith("av_fusion.") for k in weights)))
        if avs:  # some names are shared, nothing else
            raise CheckpointMismatchError(f"--init_from {init_from} holds an AVS (MED-VT++) model, whose weights "
                                          "only share some names with MED-VT's; give a MED-VT checkpoint (AVOS, VSS "
                                          "or A2D)")
        loaded, kept = init_from_checkpoint(model, init_from, ckpt)
        log.info(f"{len(loaded)} tensors from {init_from}; {len(kept)} kept at their initial values"
                 + (f": {', '.join(kept[:5])}{' …' if len(kept) > 5 else ''}" if kept else ""))
