"""models.registry: one name space for both families, one loader that says how it decided.

* every preset (MED-VT and MED-VT++, full size) builds, runs forward and backward on a small
  input, and gives finite logits of the documented layout;
* ``load_model``: the checkpoint's own config, else the named preset with the original's saved
  arguments, then given overrides; the reason says which; MED-VT++ files load the same way;
* a checkpoint written by main before this change (its structure kept in
  ``tests/fixtures/checkpoints/``, weights refilled) still loads.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from model_weights import deterministic_value

from models import PRESETS, build_model, get_preset, load_model
from models.avs_config import AVSConfig
from models.convert import CheckpointMismatchError
from models.registry import config_from_dict, resolve_config
from utils.cli import UserError

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoints" / "tiny_avos_739bbb0.json"


def small_input(cfg) -> tuple:
    if isinstance(cfg, AVSConfig):  # 5 frames (its audio positions), 64 px, audio features [B, T, 128]
        return torch.randn(1, cfg.max_frames, 3, 64, 64), torch.randn(1, cfg.max_frames, cfg.audio_dim)
    return (torch.randn(1, 6, 3, 64, 64),)


def _architecture(name: str) -> dict:
    return {k: v for k, v in get_preset(name).to_dict().items() if k != "name"}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_runs_forward_and_backward(name):
    """Each preset builds; each distinct architecture also runs forward and backward (a preset that is an
    earlier one under another name, as MED-VT++ MS3 is S4's model, runs in that one's case)."""
    torch.manual_seed(0)
    cfg = get_preset(name)
    model = build_model(name).train()
    assert model.cfg == cfg
    if next(n for n in PRESETS if _architecture(n) == _architecture(name)) != name:
        return
    inputs = small_input(cfg)
    logits = model(*inputs)["pred_masks"]
    t = inputs[0].shape[1]
    if isinstance(cfg, AVSConfig) or cfg.num_classes == 1:
        assert logits.dim() == 4 and logits.shape[:2] == (1, t), logits.shape  # [B, T, h, w]
    else:
        assert logits.shape[:3] == (1, cfg.num_classes, t), logits.shape  # [B, K, T, h, w]
    assert torch.isfinite(logits).all()
    logits.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_unknown_preset_lists_both_families():
    with pytest.raises(KeyError) as info:
        get_preset("nope")
    assert "medvtpp_s4" in str(info.value) and "medvt_swinb_avos" in str(info.value)


def _save(path, **entries) -> Path:
    torch.save(entries, path)
    return path


def test_load_model_uses_the_checkpoint_config_and_reports_overrides(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny")
    ckpt = _save(tmp_path / "ours.pth", model=model.state_dict(), config=model.cfg.to_dict())
    loaded = load_model(ckpt, preset="medvt_swinb_avos")  # the preset is ignored: the file says tiny
    assert loaded.config == model.cfg and loaded.reason == "the checkpoint's own config"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    loaded = load_model(ckpt, lprop_scale=7.2, num_classes=None)  # None = flag not given
    assert loaded.config.lprop_scale == 7.2 and "lprop_scale 7.2 as given" in loaded.reason
    with pytest.raises(UserError, match="audio_dim"):
        load_model(ckpt, audio_dim=64)


def test_load_model_of_an_authors_file_maps_its_saved_arguments(tmp_path):
    """No config: the named preset, with the original's saved arguments applied (and said)."""
    torch.manual_seed(0)
    target = build_model("tiny", lprop_scale=6.0, dec_layers=2)
    ckpt = _save(tmp_path / "authors.pth", model=target.state_dict(),
                 args=argparse.Namespace(lprop_scale=6.0, dec_layers=2, lr=1e-4))
    loaded = load_model(ckpt, preset="tiny")
    assert loaded.config == target.cfg
    assert loaded.reason.startswith("preset tiny with the original's saved arguments")
    with pytest.raises(UserError, match="records no model config"):
        load_model(ckpt)
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_model(_save(tmp_path / "cut.pth", model={k: v for k, v in target.state_dict().items()
                                                      if not k.startswith("head.")}, config=target.cfg.to_dict()))


def test_load_model_med_vt_plus_plus(tmp_path):
    """MED-VT++ through the same loader, with the config its training writes (the authors' bare
    state dicts are renamed by the converter tested in test_avs.py)."""
    torch.manual_seed(0)
    model = build_model("avs_tiny", enc_layers=(2, 1))
    ours = _save(tmp_path / "ours.pth", model=model.state_dict(), config=model.cfg.to_dict())
    loaded = load_model(ours, preset="medvtpp_s4")  # the file's own config wins over the preset
    assert loaded.config == model.cfg and type(loaded.model).__name__ == "MEDVTPlusPlus"
    assert config_from_dict(model.cfg.to_dict()) == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_a_checkpoint_written_by_main_before_the_registry_still_loads(tmp_path):
    """The structure of a checkpoint_last.pth of train_swin_medvt_avos.py at 739bbb0 (kept as JSON:
    entries, config, arguments, every weight's name/shape/dtype), refilled with weights and saved
    as that script saved it: it loads strictly, with its own config, through load_model."""
    manifest = json.loads(FIXTURE.read_text())
    assert set(manifest["top_level"]) >= {"model", "optimizer", "lr_scheduler", "epoch", "args", "config", "rng"}
    weights = {}
    for name, shape, dtype in manifest["model"]:
        if dtype.startswith("float"):
            weights[name] = deterministic_value(name, tuple(shape))
        else:
            weights[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
    ckpt = _save(tmp_path / "checkpoint_last.pth", model=weights, config=manifest["config"],
                 args=argparse.Namespace(**manifest["args"]), epoch=manifest["epoch"], optimizer={}, lr_scheduler={},
                 rng=[], best={})
    loaded = load_model(ckpt)
    assert loaded.reason == "the checkpoint's own config" and loaded.config == get_preset("tiny")
    assert list(loaded.model.state_dict()) == [name for name, _, _ in manifest["model"]]  # names and order
    for name, shape, _ in manifest["model"]:
        assert list(loaded.model.state_dict()[name].shape) == shape


def test_resolve_config_needs_a_known_field():
    cfg, reason = resolve_config({}, "tiny", lprop_scale=None)
    assert cfg == get_preset("tiny") and reason == "preset tiny"


@pytest.mark.parametrize("kind", ["swin", "resnet101", "pvt"])
def test_every_backbone_has_the_same_interface(kind):
    """forward([B, T, 3, H, W]) → four [B, T, C_i, H/s_i, W/s_i] maps with C_i = out_dims[i] and
    s_i = strides[i]; a grad_checkpointing switch that changes nothing numerically."""
    from models.backbone import PVTBackbone, ResNetBackbone, VideoSwinBackbone

    torch.manual_seed(0)
    backbone = {"swin": lambda: VideoSwinBackbone(get_preset("tiny").swin), "resnet101": ResNetBackbone,
                "pvt": lambda: PVTBackbone("pvt_v2_b0", 0.0)}[kind]().eval()
    frames = torch.randn(1, 2, 3, 64, 64)
    maps = backbone(frames)
    assert len(maps) == len(backbone.out_dims) == len(backbone.strides) == 4
    for m, c, s in zip(maps, backbone.out_dims, backbone.strides):
        assert tuple(m.shape) == (1, 2, c, 64 // s, 64 // s), (kind, m.shape, c, s)
    backbone.grad_checkpointing = True  # (with gradients on, where it applies)
    again = backbone(frames)
    assert all(torch.equal(a, b) for a, b in zip(maps, again))


def test_a_backbones_pretrained_file_given_as_the_model_says_where_it_goes(tmp_path):
    """VGGish's, Video Swin's or PVTv2's file given as --model_path (flags swapped) was refused with
    hundreds of key names (Swin's: "a PyTorch Lightning checkpoint?"); now by what it is and its flag."""
    from models.audio import VGGish

    t = torch.zeros(2)
    files = {
        "vggish.pth": (VGGish().state_dict(),
                       r"VGGish's audio weights, not a MED-VT model: they go to --vggish_weights"),
        "swin.pth": ({"meta": {}, "state_dict": {"backbone.patch_embed.proj.weight": t, "backbone.layers.0.w": t,
                                                 "cls_head.fc_cls.weight": t}},
                     r"Video Swin's Kinetics weights, not a MED-VT model: they go to a trainer's --swin_pretrained"),
        "pvt.pth": ({"patch_embed1.proj.weight": t, "block1.0.norm1.weight": t, "norm4.weight": t, "head.weight": t},
                    r"PVTv2's ImageNet weights, not a MED-VT model: they go to --pvtv2_pretrained_path"),
    }
    for name, (content, says) in files.items():
        torch.save(content, tmp_path / name)
        for preset in ("tiny", "avs_tiny"):
            with pytest.raises(CheckpointMismatchError, match=rf"^{tmp_path / name} holds {says}"):
                load_model(tmp_path / name, preset=preset)
    torch.save({"model": build_model("tiny").state_dict()}, tmp_path / "medvt.pth")  # a MED-VT file is not one
    assert load_model(tmp_path / "medvt.pth", preset="tiny").config == get_preset("tiny")
