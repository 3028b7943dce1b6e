"""Shapes, padding, batching and gradients of the MED-VT model (tiny config, CPU)."""
import pytest
import torch

from models import MODEL_CONFIGS, build_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def clip(b=1, t=6, h=96, w=128, seed=0):
    return torch.randn((b, t, 3, h, w), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t", [2, 4, 6, 9])
def test_output_shapes_for_clip_lengths(tiny, t):
    with torch.inference_mode():
        out = tiny(clip(t=t))
    assert out["pred_masks"].shape == (1, t, 12, 16)  # Swin: 1/8 of the input
    assert out["aux_pred_masks"].shape == (1, t, 12, 16)
    assert torch.isfinite(out["pred_masks"]).all()


def test_odd_input_size(tiny):
    with torch.inference_mode():
        out = tiny(clip(h=75, w=101))
    assert out["pred_masks"].shape == (1, 6, 10, 13)  # ceil(H/4) then ceil(/2): Swin padding


def test_batch_equals_clips_one_by_one(tiny):
    x = clip(b=2)
    with torch.inference_mode():
        both = tiny(x)["pred_masks"]
        one = torch.cat([tiny(x[i:i + 1])["pred_masks"] for i in range(2)])
    assert torch.allclose(both, one, atol=1e-5)


def test_padding_mask_changes_output_and_stays_finite(tiny):
    x = clip()
    mask = torch.zeros((1, 6, 96, 128), dtype=torch.bool)
    mask[..., 96:] = True  # right 32 columns are padding
    with torch.inference_mode():
        plain = tiny(x)["pred_masks"]
        padded = tiny(x, mask)["pred_masks"]
    assert torch.isfinite(padded).all()
    assert not torch.allclose(plain, padded)  # positions and attention now ignore the padded area
    all_false = torch.zeros_like(mask)
    with torch.inference_mode():
        assert torch.equal(tiny(x, all_false)["pred_masks"], plain)


def test_tiny_trains_forward_backward():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    out = model(clip(t=4))
    loss = out["pred_masks"].sigmoid().mean() + out["aux_pred_masks"].sigmoid().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for part in ("backbone.", "encoder.", "pixel_decoder.", "query_decoder.", "object_attention.", "head.",
                 "label_propagator."):
        assert any(n.startswith(part) and g.abs().sum() > 0 for n, g in grads.items()), part


def test_multiclass_head_and_no_propagation():
    model = build_model("tiny", num_classes=3).eval()
    with torch.inference_mode():
        assert model(clip(t=3))["pred_masks"].shape == (1, 3, 3, 12, 16)
    model = build_model("tiny", lprop_mode=0).eval()
    assert model.label_propagator is None
    with torch.inference_mode():
        out = model(clip(t=3))
    assert torch.equal(out["pred_masks"], out["aux_pred_masks"])


def test_eval_is_deterministic(tiny):
    x = clip(seed=3)
    with torch.inference_mode():
        assert torch.equal(tiny(x)["pred_masks"], tiny(x)["pred_masks"])


def test_named_configs_are_complete():
    assert {"medvt_swinb_avos", "medvt_swinb_avos_2024", "medvt_r101_avos", "tiny"} <= set(MODEL_CONFIGS)
    cfg = MODEL_CONFIGS["medvt_swinb_avos"]
    assert cfg.swin.window_size == (8, 7, 7) and cfg.swin.depths == (2, 2, 18, 2) and cfg.swin.embed_dim == 128
    assert MODEL_CONFIGS["medvt_swinb_avos"].from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("config", ["tiny", "medvt_r101_avos"])
def test_grad_checkpointing_gives_the_same_gradients_one_block_at_a_time(config, monkeypatch):
    """Same gradients with and without checkpointing, and every checkpointed region is a single
    block (a region spanning a stage would rebuild the whole stage's activations in backward)."""
    from torch.utils.checkpoint import checkpoint
    from torchvision.models.resnet import Bottleneck
    from torchvision.models.video.swin_transformer import SwinTransformerBlock

    import models.backbone as backbone
    import models.encoder as encoder

    regions = []

    def recording_checkpoint(fn, *args, **kwargs):
        regions.append(type(fn).__name__)
        return checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(backbone, "checkpoint", recording_checkpoint)
    monkeypatch.setattr(encoder, "checkpoint", recording_checkpoint)
    x = clip(t=3, h=64, w=64)
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = build_model(config, dropout=0.0).train()
        model.set_grad_checkpointing(enable)
        model(x)["pred_masks"].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    blocks = {c.__name__ for c in (SwinTransformerBlock, backbone.WholePatchMerging, Bottleneck, encoder.EncoderLayer)}
    assert regions and set(regions) <= blocks, set(regions) - blocks
    cfg = MODEL_CONFIGS[config]
    expected_blocks = sum(cfg.swin.depths) + 3 if cfg.backbone == "swin" else 3 + 4 + 23 + 3  # layer1..4
    assert len(regions) == expected_blocks + sum(cfg.enc_layers)
