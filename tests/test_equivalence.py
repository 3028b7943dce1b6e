"""Our models reproduce the original MED-VT logits (reference fixtures) within 1e-4 (CPU, or CUDA
with TF32 off: ``--device cuda``)."""
import pytest
import torch

from models import build_model, convert_original_state_dict
from models.convert import load_state_dict_strict
from tests.model_weights import FIXTURES, original_state_dict

CASES = [
    ("medvt_swinb_avos", "swinb_keys.tsv", "swinb_T6_224x224_seed0.pt"),
    ("medvt_swinb_avos_2024", "swinb_keys.tsv", "swinb2024_T6_224x224_seed0.pt"),
    ("medvt_r101_avos", "r101_keys.tsv", "r101_T6_224x224_seed0.pt"),
]


@pytest.mark.parametrize("config,keys,reference", CASES)
def test_matches_original_logits(config, keys, reference, device):
    model = build_model(config).eval()
    load_state_dict_strict(model, convert_original_state_dict(original_state_dict(keys, model, config), config))
    model.to(device)  # weights are made and loaded on CPU
    frames = torch.randn((6, 3, 224, 224), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(frames[None].to(device))["pred_masks"].cpu()
    expected = torch.load(FIXTURES / reference, weights_only=True)["pred_masks"]
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-4

