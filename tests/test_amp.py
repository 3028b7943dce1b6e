"""Mixed precision (autocast) runs through every part of the model on CPU as on CUDA.

No GPU is needed to catch the usual autocast bugs (an op without a low-precision kernel, mixed
dtypes reaching one op, −inf masks turning into NaN): CPU autocast casts the same op families.
The checks compare bf16/fp16 autocast with float32 on the same weights and input, on CPU or, with
``--device cuda``, on the GPU (the thresholds are the CPU-measured ones).
"""
import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.losses import AVOSCriterion
from models.pixel_decoder import FPNPixelDecoder
from tests.model_weights import fill_deterministic
from utils.cli import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The models here take deterministic weights (tests/model_weights.py), not torch's initialisers:
# those draw other weights for the same seed from one torch release to the next, and the figures
# below move with the weights. Each threshold was set against six weight draws (salts 0..5) on CPU
# under torch 2.9.1 and 2.14.1, which gave the same figures for the same weights; the tests use
# draw 0. A broken op (no low-precision kernel, a NaN mask, a wrong cast) shows as a correlation
# near zero, far below any of them.
# The figures also move with the CPU: oneDNN picks other bf16 kernels where the CPU has native bf16
# matrix units (Intel AMX-BF16) than where it has not (2-core AMD EPYC), and a kernel's rounding
# differs. The thresholds hold on both, with room.
# Relative error of the logits against float32: bf16 keeps 8 significant bits, fp16 11.
# Measured: bf16 0.03-0.19 on the EPYC, 0.02-0.28 on a Xeon with AMX-BF16 (draw 0 of the 2024
# variant: 0.276); fp16 0.003-0.041 and 0.003-0.046.
MAX_REL_ERR = {"bf16": 0.35, "fp16": 0.06}
# Correlation of the logits with float32. Measured: bf16 0.9775-0.9996 on the EPYC, 0.9728-0.9997
# on the Xeon; fp16 0.9995-1.0 and 0.9992-1.0.
MIN_CORR = {"bf16": 0.95, "fp16": 0.995}


def _model(device, **overrides):
    return fill_deterministic(build_model("tiny", **overrides)).eval().to(device)


def _low_dtypes(dtype: str, device: torch.device) -> tuple:
    """Output dtypes autocast may give: CUDA's autocast runs norms and softmax in float32 (its
    float32 list is longer than the CPU one), so the last ops of a model may return float32 there."""
    return (DTYPES[dtype],) if device.type == "cpu" else (DTYPES[dtype], torch.float32)


def _corr(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return float(F.cosine_similarity(a - a.mean(), b - b.mean(), dim=0))


def test_deformable_conv_runs_in_float32_under_autocast(device):
    torch.manual_seed(0)
    dec = FPNPixelDecoder(16).eval()
    torch.nn.init.normal_(dec.conv_offset.weight, std=0.5)  # non-zero offsets: real bilinear sampling
    dec.to(device)
    x = torch.randn(2, 16, 10, 12).to(device)
    with torch.no_grad():
        ref = dec._deform(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = dec._deform(x.bfloat16())
    assert low.dtype == torch.bfloat16
    # only the input's bf16 rounding and the offset conv differ from float32
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("overrides", [{}, {"variant": "2024train", "lprop_mode": 1, "num_classes": 3},
                                       {"variant": "2024"}], ids=["cvpr23", "2024train-lprop1-3cls", "2024"])
def test_autocast_forward_matches_float32(dtype, overrides, device):
    model = _model(device, **overrides)
    x = torch.randn(1, 4, 3, 64, 96, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast(device.type, dtype=DTYPES[dtype]):
            low = model(x)
    for key in ("pred_masks", "aux_pred_masks"):
        assert low[key].dtype in _low_dtypes(dtype, device), key
        assert torch.isfinite(low[key]).all(), key
        err = (low[key].float() - ref[key]).abs().max() / ref[key].abs().max()
        assert 0 < err < MAX_REL_ERR[dtype], (key, float(err))  # > 0: autocast really ran
        assert _corr(low[key], ref[key]) > MIN_CORR[dtype], key


# Cosine of the whole gradient with the float32 one, at untrained weights where many terms cancel,
# dropout off. Measured over the six draws: bf16 0.72-0.89, fp16 0.970-0.994; the last head conv's
# own gradient bf16 0.969-0.999, fp16 0.993-1.0. The agreement falls off smoothly with depth from
# the output (head, then query decoder, then backbone), the signature of rounding, not of one broken
# op, which would show as a near-zero or negative cosine. (With torch's own initialisers, twelve
# seeds gave bf16 0.42-0.92 under torch 2.9.1 and 0.76-0.92 under 2.14.1.)
MIN_GRAD_COSINE = {"bf16": 0.65, "fp16": 0.95}
MIN_LAST_CONV_COSINE = {"bf16": 0.95, "fp16": 0.99}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_training_step_gradients_follow_float32(dtype, device):
    """One AVOS loss backward under autocast: every gradient finite, the same parameters reached,
    and the whole gradient points the way the float32 one does."""
    # No dropout: on CUDA each SDPA backend draws its own dropout mask (float32 and bf16 take
    # different backends), so the same seed would not give the same masks there.
    model = _model(device, dropout=0.0).train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 3, 64, 96, generator=g).to(device)
    y = (torch.rand(1, 4, 64, 96, generator=g) > 0.5).float().to(device)
    criterion = AVOSCriterion()

    def grads(dtype):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = criterion(model(x), y)["loss"]
        loss.backward()
        assert loss.dtype == torch.float32  # the loss is summed in float32 under autocast too
        return {n: p.grad.double().flatten() for n, p in model.named_parameters() if p.grad is not None}

    ref, low = grads(None), grads(DTYPES[dtype])
    assert low.keys() == ref.keys()  # the same parameters got gradients
    assert all(torch.isfinite(g).all() for g in low.values())
    cosine = F.cosine_similarity(torch.cat(list(low.values())), torch.cat(list(ref.values())), dim=0)
    assert cosine > MIN_GRAD_COSINE[dtype]
    last = [n for n, _ in model.head[-1].named_parameters(prefix="head." + str(len(model.head) - 1))]
    last_cosine = F.cosine_similarity(torch.cat([low[n] for n in last]), torch.cat([ref[n] for n in last]), dim=0)
    assert last_cosine > MIN_LAST_CONV_COSINE[dtype]


# MED-VT++ normalises its query-pixel affinities over the query axis (LayerNorm over 16 queries).
# With untrained weights the queries' affinities differ by 0.7% (tiny) or 0.17% (S4) of what they
# share, so the norm magnifies the inputs' rounding some hundred times: over the six draws bf16
# (8 significant bits) keeps a correlation of 0.944-0.976 with float32, fp16 (11 bits) 0.998-0.9996.
# Trained queries are expected to differ more; no trained MED-VT++ weights are on this machine.
MIN_MEDVTPP_CORR = {"bf16": 0.85, "fp16": 0.99}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_medvtpp_autocast_forward_matches_float32(dtype, device):
    from models.avs import build_avs_model

    model = fill_deterministic(build_avs_model("avs_tiny")).eval().to(device)
    g = torch.Generator().manual_seed(1)
    frames, audio = torch.randn(1, 5, 3, 64, 64, generator=g), torch.randn(1, 5, 128, generator=g)
    frames, audio = frames.to(device), audio.to(device)
    with torch.inference_mode():
        ref = model(frames, audio)["pred_masks"]
        with torch.autocast(device.type, dtype=DTYPES[dtype]):
            low = model(frames, audio)["pred_masks"]
    assert low.dtype in _low_dtypes(dtype, device) and torch.isfinite(low).all()
    assert _corr(low, ref) > MIN_MEDVTPP_CORR[dtype]


def test_compare_masks_counts_iou_per_sequence_and_frame(tmp_path):
    import numpy as np
    from PIL import Image

    from benchmarks.compare_masks import compare

    def write(root, seq, name, mask):
        (root / seq).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(root / seq / name)

    a, b = tmp_path / "fp32", tmp_path / "bf16"
    write(a, "s1", "00000.png", [[1, 1, 0, 0]])
    write(b, "s1", "00000.png", [[1, 0, 0, 0]])  # 1 / 2
    write(a, "s1", "00001.png", [[0, 0, 0, 0]])
    write(b, "s1", "00001.png", [[0, 0, 0, 0]])  # empty in both: 1
    write(a, "s2", "00000.png", [[1, 1, 1, 0]])
    write(b, "s2", "00000.png", [[0, 1, 1, 1]])  # 2 / 4
    res = compare(a, b)
    assert res["frames"] == 3
    assert res["sequences"] == {"s1": 0.5, "s2": 0.5}
    assert res["pooled_iou"] == pytest.approx(3 / 6)
    assert res["mean_frame_iou"] == pytest.approx((0.5 + 1 + 0.5) / 3) and res["min_frame_iou"] == 0.5
    (b / "s2" / "00000.png").unlink()
    with pytest.raises(UserError, match="only one folder"):
        compare(a, b)
