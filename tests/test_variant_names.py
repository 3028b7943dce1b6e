"""One name per forward of the Swin-B MED-VT model (``cvpr23``, ``2024train``, ``2024``) in the
config, the presets and ``--model_version``; the earlier spellings (variants ``v1``/``v2``/``v3``
in saved configs, preset ``medvt_swinb_avos_v2``) still give the same config and model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import export_onnx
import inference_swin_medvt_avos as avos_infer
from actor_action import inference_medvt_a2d as a2d_infer
from avos import model as inf
from models import build_model, get_config, get_preset
from models.config import PRESET_ALIASES, VARIANT_ALIASES, VARIANTS, MedVTConfig
from utils.cli import UserError
from vss import inference_medvt_vss as vss_infer

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoints" / "tiny_avos_739bbb0.json"
OLD_NEW = sorted(VARIANT_ALIASES.items())  # v1 → cvpr23, v2 → 2024train, v3 → 2024


@pytest.mark.parametrize("old,new", OLD_NEW)
def test_old_variant_spellings_give_the_same_config(old, new):
    tiny = get_config("tiny")
    assert tiny.replace(variant=old) == tiny.replace(variant=new)
    assert tiny.replace(variant=old).variant == new
    saved = {**tiny.to_dict(), "variant": old}  # as an earlier version wrote it
    assert MedVTConfig.from_dict(saved) == tiny.replace(variant=new)
    assert tiny.replace(variant=old).to_dict()["variant"] == new  # written with the name now


def test_an_unknown_variant_is_refused_by_name():
    with pytest.raises(ValueError, match="cvpr23, 2024train, 2024"):
        MedVTConfig(variant="v4")


def test_old_and_new_variant_names_build_the_same_model_and_the_three_differ():
    frames = torch.randn(1, 6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for old, new in OLD_NEW:
        models = []
        for variant in (old, new):
            torch.manual_seed(0)
            models.append(build_model("tiny", variant=variant).eval())
        a, b = models
        assert a.cfg == b.cfg and list(a.state_dict()) == list(b.state_dict())  # same names
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        with torch.inference_mode():
            outputs[new] = a(frames)["pred_masks"]
            assert torch.equal(outputs[new], b(frames)["pred_masks"])
    # The name really selects a forward: the three differ on the same weights.
    assert not torch.equal(outputs["cvpr23"], outputs["2024"])
    assert not torch.equal(outputs["cvpr23"], outputs["2024train"])


def test_preset_suffixes_are_the_variant_names_and_old_preset_names_still_build():
    assert get_config("medvt_swinb_avos").variant == "cvpr23"
    for variant in ("2024train", "2024"):
        assert get_config(f"medvt_swinb_avos_{variant}") == get_config("medvt_swinb_avos").replace(variant=variant)
    for old, new in PRESET_ALIASES.items():
        assert get_config(old) == get_config(new) == get_preset(old) == get_preset(new)
    assert get_config("medvt_swinb_avos_v2").variant == "2024train"
    assert get_config("medvt_swinb_a2d").variant == "2024train"
    with pytest.raises(KeyError, match="medvt_swinb_avos_2024train"):
        get_config("medvt_swinb_avos_v4")


def test_the_739bbb0_checkpoint_config_still_reads_as_tiny():
    saved = json.loads(FIXTURE.read_text())["config"]
    assert saved["variant"] == "v1"  # the spelling of that time
    assert MedVTConfig.from_dict(saved) == get_config("tiny")
    assert MedVTConfig.from_dict({**saved, "variant": "v3"}) == get_config("tiny").replace(variant="2024")


@pytest.mark.parametrize("old,new", OLD_NEW)
def test_model_version_and_a_saved_old_variant_resolve_to_the_same_forward(old, new):
    """An authors' file with ``--model_version <name>``, our file saved with the old spelling and
    read with ``auto``, and our file overridden by ``--model_version``: one forward."""
    authors = inf.resolve_model_config({"model": {}}, new)
    assert authors.config.variant == authors.version == new
    assert authors.config_name == ("medvt_swinb_avos" if new == "cvpr23" else f"medvt_swinb_avos_{new}")
    tiny = get_config("tiny")
    ours_old = {"model": {}, "config": {**tiny.to_dict(), "variant": old}}
    auto = inf.resolve_model_config(ours_old)
    assert auto.config == tiny.replace(variant=new) and auto.version == new
    explicit = inf.resolve_model_config(ours_old, new)
    assert explicit.config == auto.config and "sets the forward" not in explicit.reason
    other = next(v for v in VARIANTS if v != new)
    assert inf.resolve_model_config(ours_old, other).config.variant == other


def test_model_version_values_of_before_resolve_as_before():
    """``cvpr23`` and ``2024`` (the flag's only values before) pick the same presets as before."""
    assert inf.resolve_model_config({"model": {}}, "cvpr23").config == get_config("medvt_swinb_avos")
    swinb = get_config("medvt_swinb_avos")
    assert inf.resolve_model_config({"model": {}}, "2024").config == swinb.replace(variant="v3")
    with pytest.raises(UserError, match="Swin-B"):
        inf.resolve_model_config({"model": {}}, "2024train", backbone="resnet101")


@pytest.mark.parametrize("make,base", [(avos_infer.get_args_parser, ["--model_path", "m.pth"]),
                                       (export_onnx.get_args_parser, ["--output", "m.onnx"])])
def test_model_version_flag_takes_and_lists_the_variant_names(make, base):
    for value in ("auto", *VARIANTS):
        assert make().parse_args(base + ["--model_version", value]).model_version == value
    with pytest.raises(SystemExit):
        make().parse_args(base + ["--model_version", "v3"])
    assert "{auto,cvpr23,2024train,2024}" in make().format_help()


@pytest.mark.parametrize("make,base,flag", [(export_onnx.get_args_parser, ["--output", "m.onnx"], "--config"),
                                            (a2d_infer.get_args_parser, ["--model_path", "m.pth"], "--model"),
                                            (vss_infer.get_args_parser, ["--model_path", "m.pth"], "--model")])
def test_preset_flags_take_old_names(make, base, flag):
    args = vars(make().parse_args(base + [flag, "medvt_swinb_avos_v2"]))
    assert args[flag[2:]] == "medvt_swinb_avos_2024train"
    assert "medvt_swinb_avos_v2" not in make().format_help()  # listed by its name now only

