"""Files read are untrusted: a damaged or hostile checkpoint (its config, its state dict, a resume file's
inner entries, a Video Swin file) is refused in one line naming the file, before anything is allocated
from it, never a traceback and never a run that trains on. Tiny files and the ``tiny`` model; CPU."""
from __future__ import annotations

import argparse
import logging

import pytest
import torch

from avos import model as inf
from models import build_model, get_config, load_model
from models.avs_config import AVS_CONFIGS, get_avs_config
from models.config import MedVTConfig
from models.convert import CheckpointMismatchError, init_from_checkpoint, read_checkpoint
from models.registry import config_from_dict, init_weights, resolve_config
from tests.test_resume_safety import _ckpt, _resume
from utils.checkpoint import save_checkpoint
from utils.cli import UserError
from utils.resume import read_resume_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TINY = get_config("tiny")


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("tiny").state_dict()


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------- 1: a config asking for a huge model
def test_a_config_of_absurd_sizes_is_refused_before_anything_is_built(tmp_path):
    """dim_feedforward 4e8 made every script try to allocate 76.8 GB: the config is refused as read,
    also when it comes from an authors' file's saved training arguments."""
    huge = {**TINY.to_dict(), "dim_feedforward": 400_000_000}
    with pytest.raises(UserError, match=r"dim_feedforward is 400000000, expected an integer from 1 to 65536"):
        MedVTConfig.from_dict(huge)
    with pytest.raises(UserError, match=r"^a\.pth: .*dim_feedforward is 400000000"):
        resolve_config({"model": {}, "config": huge}, source="a.pth")
    with pytest.raises(UserError, match=r"^b\.pth: .*dim_feedforward is 400000000"):
        resolve_config({"model": {}, "args": argparse.Namespace(dim_feedforward=400_000_000)}, "tiny", source="b.pth")
    with pytest.raises(UserError, match=r"enc_dim_ff is 10000000000"):
        get_avs_config({**AVS_CONFIGS["avs_tiny"].to_dict(), "enc_dim_ff": 10**10})


def test_weights_are_compared_with_the_config_before_the_model_is_allocated(tmp_path, tiny_weights, monkeypatch):
    """A config within the bounds whose sizes its weights do not have: the key/shape list comes from the
    model built on the meta device; no real model is built (it could be as large as the bounds allow)."""
    import models.registry as registry

    path = tmp_path / "wide.pth"
    torch.save({"model": tiny_weights, "config": TINY.replace(dim_feedforward=4096).to_dict()}, path)
    real = registry.build_model
    devices = []

    def spy(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "build_model", spy)
    with pytest.raises(CheckpointMismatchError, match=rf"(?s)^{path} does not fit the model \(MEDVT\).*shape mismat"):
        load_model(path)
    ckpt = read_checkpoint(path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        inf.build_from_checkpoint(ckpt, inf.resolve_model_config(ckpt), str(path))
    assert devices and set(devices) == {"meta"}, devices


# ------------------------------------------------------------- 2: a damaged config dict
def _tiny(**changes) -> dict:
    d = TINY.to_dict()
    swin = {**d["swin"], **{k[5:]: v for k, v in changes.items() if k.startswith("swin_")}}
    return {**d, **{k: v for k, v in changes.items() if not k.startswith("swin_")}, "swin": swin}


DAMAGED = {
    "swin_key": (_tiny(swin_foo=1), r"unknown swin fields \['foo'\]"),
    "variant": (_tiny(variant="zzz"), r"variant is 'zzz', expected one of 'cvpr23'"),
    "d_model_text": (_tiny(d_model="48"), r"d_model is '48', expected an integer"),
    "heads": (_tiny(nheads=5), r"nheads is 5, expected a divisor of d_model 48"),
    "enc_layers": (_tiny(enc_layers=[1]), r"enc_layers is \[1\], expected 2 integers"),
    "bool_for_int": (_tiny(num_classes=True), r"num_classes is True"),
    "swin_heads": (_tiny(swin_num_heads=[1, 2, 5, 4]), r"swin\.num_heads\[2\] is 5, expected a divisor of its stage's"),
    "huge": (_tiny(dim_feedforward=400_000_000), r"dim_feedforward is 400000000"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_config_is_one_line_naming_the_file_and_field(case, tmp_path):
    """Each was a traceback (TypeError SwinConfig.__init__, ValueError, IndexError, ...) in the AVOS
    inference script, the registry loader (VSS, AVS, export) and the --resume check."""
    config, field = DAMAGED[case]
    ckpt = {"model": {}, "config": config}
    with pytest.raises(UserError, match=r"^--model_path x\.pth: the checkpoint's model config .*" + field) as e:
        inf.resolve_model_config(ckpt, source="--model_path x.pth")
    _one_line(e)
    with pytest.raises(UserError, match=r"^x\.pth: the checkpoint's model config .*" + field):
        resolve_config(ckpt, source="x.pth")
    path = save_checkpoint({**ckpt, "optimizer": {}, "lr_scheduler": {}, "epoch": 0}, tmp_path / "run.pth")
    with pytest.raises(CheckpointMismatchError, match=str(path)) as e:
        read_resume_checkpoint(path, argparse.Namespace(lr=1e-3), TINY)
    _one_line(e)


def test_a_damaged_avs_config_names_the_field():
    base = AVS_CONFIGS["avs_tiny"].to_dict()
    with pytest.raises(UserError, match=r"not a MED-VT\+\+ config \(unknown fields \['bogus'\]\)"):
        config_from_dict({**base, "bogus": 1})  # was TypeError AVSConfig.__init__
    with pytest.raises(UserError, match=r"enc_nhead is 5, expected a divisor of d_model 48"):
        config_from_dict({**base, "enc_nhead": 5})
    with pytest.raises(UserError, match=r"backbone is 'resnet9000'"):
        config_from_dict({**base, "backbone": "resnet9000"})
    assert config_from_dict(base) == AVS_CONFIGS["avs_tiny"]


# ------------------------------------------------------------- 3: state dicts that are not names → dense tensors
@pytest.mark.parametrize("kind", ["int_keys", "sparse", "meta"])
def test_a_state_dict_of_odd_keys_or_tensors_is_one_line(kind, tmp_path, tiny_weights):
    """Integer keys (AttributeError startswith), a sparse tensor (NotImplementedError in the finiteness
    check), a meta tensor (RuntimeError item() on meta): every reader of weights refuses them."""
    sd = dict(tiny_weights)
    name = next(k for k, v in sd.items() if v.dim() == 2)
    if kind == "int_keys":
        sd = {i: v for i, v in enumerate(sd.values())}
        text = r"its state dict has keys that are not parameter names \(e\.g\. 0 of type int\)"
    elif kind == "sparse":
        sd[name] = sd[name].to_sparse()
        text = rf"its tensor {name} is sparse"
    else:
        sd[name] = torch.empty(sd[name].shape, device="meta")
        text = rf"its tensor {name} is on the meta device"
    path = tmp_path / f"{kind}.pth"
    torch.save({"model": sd, "config": TINY.to_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=rf"^{path} is damaged: {text}") as e:
        load_model(path)
    _one_line(e)
    with pytest.raises(CheckpointMismatchError, match=rf"^{path} is damaged: {text}"):
        init_from_checkpoint(build_model("tiny"), path)


# ------------------------------------------------------------- 4: a resume file's inner entries
RESUME_DAMAGE = {
    "optimizer": ({"optimizer": {}}, r"'optimizer' entry is not an optimiser's state"),
    "epoch_text": ({"epoch": "x"}, r"'epoch' entry is 'x', not the number of an epoch"),
    "epoch_negative": ({"epoch": -5}, r"'epoch' entry is -5, not the number of an epoch"),
    "rng": ({"rng": [{"python": 1}]}, r"'rng' entry holds a state the random number generators do not take"),
    "best": ({"best": {"miou": "abc", "epoch": 0}}, r"'best' entry is \{'miou': 'abc', 'epoch': 0\}, not a best"),
    "best_epoch": ({"best": {"miou": 0.5, "epoch": 7}}, r"'best' entry .* from -1 to the file's epoch 2"),
    "history": ({"history": [1, 2, "x"]}, r"'history' entry is not a list of per-epoch rows"),
}


@pytest.mark.parametrize("case", RESUME_DAMAGE)
def test_a_damaged_resume_file_is_refused_before_the_run_starts(case, tmp_path):
    """Each ended in a KeyError / ValueError / TypeError mid-resume, and epoch -5 trained epochs -4 .. 1."""
    changes, text = RESUME_DAMAGE[case]
    path = _ckpt(tmp_path / "checkpoint_last.pth")
    save_checkpoint({**read_checkpoint(path), **changes}, path)
    with pytest.raises(CheckpointMismatchError, match=rf"^--resume {path} is damaged: its {text}") as e:
        read_resume_checkpoint(path, argparse.Namespace(lr=1e-3), TINY)
    _one_line(e)


def test_saved_states_that_do_not_fit_this_run_are_named_when_loaded(tmp_path, caplog):
    """Optimiser state of another shape than its parameter (accepted, then a crash at the first step), a
    schedule value of another kind, a best score of another metric (a KeyError at the epoch's end)."""
    path = _ckpt(tmp_path / "run" / "checkpoint_last.pth")
    ckpt = read_checkpoint(path)
    cases = {
        "optimizer": {"optimizer": {**ckpt["optimizer"], "state": {0: {"step": torch.tensor(1.0),
                                                                      "exp_avg": torch.zeros(5),
                                                                      "exp_avg_sq": torch.zeros(5)}}},
                      "text": r"'optimizer' entry holds exp_avg of shape \(5,\) for a parameter of shape \(2, 3\)"},
        "lr_scheduler": {"lr_scheduler": {**ckpt["lr_scheduler"], "max_steps": "x"},
                         "text": r"'lr_scheduler' entry holds max_steps = 'x', where this run has 4"},
        "best": {"best": {"acc": 0.5, "epoch": 1}, "text": r"'best' entry has no miou \(it holds acc, epoch\)"},
    }
    for change in cases.values():
        text = change.pop("text")
        save_checkpoint({**ckpt, **change}, path)
        with pytest.raises(CheckpointMismatchError, match=rf"^--resume {path} is damaged: its {text}") as e:
            _resume(path, tmp_path / "run", caplog)
        _one_line(e)
    save_checkpoint(ckpt, path)
    _resume(path, tmp_path / "run", caplog)  # the undamaged file resumes


# ------------------------------------------------------------- 5: a --swin_pretrained file of another kind
def test_a_video_swin_file_without_its_entries_or_of_another_width_is_named_by_flag(tmp_path):
    """No patch_embed: KeyError 'patch_embed.proj.weight'; another width: RuntimeError size mismatch."""
    nokeys, wide = tmp_path / "nokeys.pth", tmp_path / "wide.pth"
    torch.save({"state_dict": {"backbone.foo": torch.zeros(1)}}, nokeys)
    torch.save({"state_dict": {"backbone.patch_embed.proj.weight": torch.zeros(96, 3, 2, 4, 4),
                               "backbone.patch_embed.proj.bias": torch.zeros(96),
                               "backbone.norm.weight": torch.ones(768), "backbone.norm.bias": torch.zeros(768)}}, wide)
    model, log = build_model("tiny"), logging.getLogger("test_untrusted_checkpoints")
    flag = "--swin_b_pretrained_path"  # each task names its own flag
    with pytest.raises(CheckpointMismatchError, match=rf"^{flag} {nokeys}: no entries backbone\.patch_embed\.proj\."
                                                      r"weight, backbone\.norm\.weight.*not a Video Swin") as e:
        init_weights(model, log, (flag, str(nokeys)), ("--vistr_coco", None), None)
    _one_line(e)
    with pytest.raises(CheckpointMismatchError, match=rf"^{flag} {wide} is a Video Swin checkpoint of another size "
                                                      r"than this backbone \(embed_dim 24\): .*patch_embed\.proj\."
                                                      r"weight: file \(96, 3, 1, 4, 4\) vs model \(24, 3, 1, 4, 4\)"):
        init_weights(model, log, (flag, str(wide)), ("--vistr_coco", None), None)
