"""The converter maps every original entry onto ours, and the checkpoint loader reports mismatches."""
import argparse

import pytest
import torch

from models import (CheckpointMismatchError, build_model, convert_original_state_dict, infer_model_version,
                    load_checkpoint)
from tests.model_weights import FIXTURES, read_key_list

# The original registers these and never uses them: value projections WV and samp_w_pred.
UNUSED = 2 * (392 * 392 + 392) + (64 * 16 * 9 + 16)


@pytest.fixture(scope="module")
def swin_model():
    return build_model("medvt_swinb_avos")


@pytest.mark.parametrize("config,keys,original_params", [
    ("medvt_swinb_avos", "swinb_keys.tsv", 141_160_012),
    ("medvt_r101_avos", "r101_keys.tsv", 97_001_796),
])
def test_every_original_key_maps_onto_ours(config, keys, original_params):
    model = build_model(config) if config != "medvt_swinb_avos" else build_model(config)
    rows = read_key_list(FIXTURES / keys)
    sd = {name: torch.zeros(shape, dtype=torch.float32 if dt.startswith("float") else torch.int64)
          for name, shape, dt in rows}
    converted = convert_original_state_dict(sd, config)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    dropped = {n for n in sd if "WV." in n or "samp_w_pred" in n}
    assert len(sd) - len(converted) == len(dropped) == 6
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == original_params - UNUSED


def test_converter_is_idempotent_and_strips_prefixes(swin_model):
    sd = {"module.transformer.fpn.lay1.weight": torch.zeros(1),
          "backbone.layers.2.blocks.5.mlp.fc2.bias": torch.zeros(1)}
    once = convert_original_state_dict(sd, "medvt_swinb_avos")
    assert set(once) == {"pixel_decoder.lay1.weight", "backbone.features.4.5.mlp.3.bias"}
    assert convert_original_state_dict(once, "medvt_swinb_avos") == once


def _tiny():
    return build_model("tiny")


def test_loads_original_style_checkpoint_with_args_and_module_prefix(tmp_path):
    model = _tiny()
    ckpt = {"model": {"module." + k: v for k, v in model.state_dict().items()},
            "args": argparse.Namespace(lr=1e-4, use_flow=0), "epoch": 3}
    torch.save(ckpt, tmp_path / "c.pth")
    other = _tiny()
    loaded = load_checkpoint(other, tmp_path / "c.pth")
    assert loaded["epoch"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
    assert infer_model_version(loaded)[0] == "2024"
    assert infer_model_version({"args": argparse.Namespace(lr=1e-4)})[0] == "cvpr23"
    assert infer_model_version({})[0] == "cvpr23"


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    model = _tiny()
    sd = dict(model.state_dict())
    sd.pop("head.9.bias")
    sd["head.0.weight"] = torch.zeros(3)
    sd["not.a.key"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(_tiny(), tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing keys (1): head.9.bias" in msg
    assert "unexpected keys (1): not.a.key" in msg
    assert "head.0.weight: checkpoint (3,)" in msg


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_arbitrary_pickles_and_junk(tmp_path):
    torch.save({"model": {}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointMismatchError, match="not loaded for safety"):
        load_checkpoint(_tiny(), tmp_path / "evil.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(_tiny(), tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="--model_path"):
        load_checkpoint(_tiny(), tmp_path / "missing.pth")


def test_vistr_coco_init_copies_last_decoder_layer_and_slices_ffn(tmp_path):
    from models.convert import init_from_vistr_coco

    model = _tiny()  # d_model 48, FFN 96, 3 decoder layers
    sd = {
        "vistr.transformer.encoder.layers.0.linear1.weight": torch.arange(200 * 48.0).view(200, 48),
        "vistr.transformer.decoder.layers.1.norm1.weight": torch.full((48,), 2.0),
        "vistr.transformer.decoder.norm.bias": torch.ones(48),
        "vistr.backbone.0.body.conv1.weight": torch.zeros(64, 3, 7, 7),  # not taken by a Swin model
        "vistr.transformer.mask_head.lay1.weight": torch.zeros(1),
    }
    torch.save({"model": sd}, tmp_path / "coco.pth")
    loaded = init_from_vistr_coco(model, tmp_path / "coco.pth")
    assert loaded == ["encoder.stages.0.0.linear1.weight", "query_decoder.layers.1.norm1.weight",
                      "query_decoder.layers.2.norm1.weight", "query_decoder.norm.bias"]
    assert torch.equal(model.encoder.stages[0][0].linear1.weight,
                       sd["vistr.transformer.encoder.layers.0.linear1.weight"][:96])
    assert torch.equal(model.query_decoder.layers[2].norm1.weight, torch.full((48,), 2.0))
