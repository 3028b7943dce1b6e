"""One vocabulary across the scripts: the shared --amp flag of the inference scripts (a bare --amp,
the older switch, still means bf16) and the original spellings kept as aliases."""
from __future__ import annotations

import pytest
import torch

import inference_swin_medvt_avos as avos_infer
from actor_action import inference_medvt_a2d as a2d_infer
from avs import test_medvt as avs_test
from utils.engine import AMP_DTYPES
from vss import inference_medvt_vss as vss_infer

PARSERS = {"avos": (avos_infer.get_args_parser, ["--model_path", "m.pth"]),
           "vss": (vss_infer.get_args_parser, ["--model_path", "m.pth"]),
           "a2d": (a2d_infer.get_args_parser, ["--model_path", "m.pth"])}


@pytest.mark.parametrize("script", list(PARSERS))
def test_inference_amp_flag(script):
    make, base = PARSERS[script]
    assert make().parse_args(base).amp == "none"
    assert make().parse_args(base + ["--amp"]).amp == "bf16"  # the older on/off switch
    assert make().parse_args(base + ["--amp", "fp16"]).amp == "fp16"
    with pytest.raises(SystemExit):
        make().parse_args(base + ["--amp", "fp64"])
    assert AMP_DTYPES["bf16"] is torch.bfloat16 and AMP_DTYPES["none"] is None


def test_avs_test_takes_model_path_and_the_original_weights_spelling():
    p = avs_test.get_args_parser()
    assert p.parse_args(["--model_path", "a.pth"]).model_path == "a.pth"
    assert p.parse_args(["--weights", "b.pth"]).model_path == "b.pth"


def test_avos_training_names_the_test_model_by_config_and_keeps_backbone_tiny():
    """--backbone names a backbone; the small test model is --model_config tiny. The older
    --backbone tiny still resolves to the same model and defaults, but --help no longer offers it."""
    import train_swin_medvt_avos as avos_train

    parser = avos_train.get_args_parser()
    new = avos_train.resolve_defaults(parser.parse_args(["--model_config", "tiny"]))
    old = avos_train.resolve_defaults(parser.parse_args(["--backbone", "tiny"]))
    assert new.model_config == old.model_config == "tiny"
    assert avos_train.model_config(new) == avos_train.model_config(old)
    assert {k: getattr(new, k) for k in avos_train.BACKBONE_DEFAULTS["tiny"]} == \
        {k: getattr(old, k) for k in avos_train.BACKBONE_DEFAULTS["tiny"]}
    assert "{swinB,resnet101}" in parser.format_help()


@pytest.mark.parametrize("argv, flag", [(["--weights", "w.pth"], "--weights"), (["--weights=w.pth"], "--weights"),
                                        (["--model_path", "w.pth"], "--model_path"),
                                        (["--weights", "a", "--model_path", "b"], "--model_path")])
def test_the_avs_model_flag_is_named_as_typed(argv, flag):
    """avs/test_medvt.py takes the original's --weights for --model_path: its messages named --model_path
    for a file given as --weights. They now name the flag the user wrote (the last one, which argparse keeps)."""
    from utils.cli import typed_option

    parser = avs_test.get_args_parser()
    assert typed_option(parser, "model_path", argv) == flag
