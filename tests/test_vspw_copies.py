"""A user's own copy of VSPW (its real on-disk layout, :func:`tests.test_vss.write_vspw`) that differs from
the release: labels of a larger class set, two files of one frame name, unpadded frame numbers, masks
missing, 16-bit frames. Each was read silently wrong; now it is read right or refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.video import open_image
from datasets.vspw import VSPWTrainTransform, build_vspw_train_dataset, raw_to_class, vspw_sequences
from models import build_model
from utils.cli import UserError
from vss.common import evaluate_videos, overlay_colors
from vss.config import vss_config
from vss.losses import VSSCriterion
from tests.test_vss import K, write_vspw

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CPU = torch.device("cpu")


def _model(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(vss_config("tiny", num_classes)).eval()


def _evaluate(model, videos):
    return evaluate_videos(model, videos, CPU, save_predictions=False, progress=False, val_size=48, clip_len=2)


def _relabel(root, video, labels=(130, 140)):
    """Masks of a 150-class copy: the square becomes raw label 130, the left half of the rest 140."""
    for path in sorted((root / "data" / video / "mask").glob("*.png")):
        mask = np.array(Image.open(path))
        mask[mask == 1] = labels[0]  # write_vspw's square of the first video (class 0, raw 1)
        mask[:, 2:20][mask[:, 2:20] == 2] = labels[1]
        Image.fromarray(mask).save(path)


# 1 ------------------------------------------------------------------------------------------
def test_labels_of_a_larger_class_set_are_classes_of_the_model_not_void(tmp_path):
    """Raw labels 130/140 of a 150-class copy became void whatever --num_classes said: loss 0, mIoU 0."""
    root = write_vspw(tmp_path / "VSPW", {"a_val": ("val", 3)})
    _relabel(root, "a_val")
    raw = np.array([[0, 1, 124, 130, 140, 150, 255]], np.uint8)
    assert raw_to_class(raw, 150).tolist() == [[255, 0, 123, 129, 139, 149, 255]]
    assert raw_to_class(raw[:, :3]).tolist() == raw_to_class(raw[:, :3], 124).tolist() == [[255, 0, 123]]
    summary = _evaluate(_model(150), vspw_sequences(root, "val"))
    assert summary["class_IoU"][129] is not None and summary["class_IoU"][139] is not None  # scored, not void


def test_labels_beyond_the_model_are_refused_naming_the_mask_and_flag(tmp_path):
    root = write_vspw(tmp_path / "VSPW", {"a_val": ("val", 3)})
    _relabel(root, "a_val")
    msg = (r"VSPW video a_val: its masks hold class id 139 \(raw label 140\), but the model has 124 classes .*"
           r"a_val/mask/00000000\.png; check --num_classes")
    with pytest.raises(UserError, match=msg):
        _evaluate(_model(124), vspw_sequences(root, "val"))


def test_training_clips_use_the_model_class_count(tmp_path):
    root = write_vspw(tmp_path / "VSPW", {"a_train": ("train", 2)})
    _relabel(root, "a_train")
    transform = VSPWTrainTransform((48,), None, None, hflip=0.0, seed=0)
    masks = build_vspw_train_dataset(root, num_frames=2, transform=transform, num_classes=150)[0]["masks"]
    assert {129, 139} <= set(masks.unique().tolist())
    with pytest.raises(UserError, match=r"raw label 140\), but the model has 124 classes .*a_train/mask/0000000"
                                        r"\d\.png; check --num_classes"):
        build_vspw_train_dataset(root, num_frames=2, transform=transform, num_classes=124)[0]
    # without the class count (the dataset as built before it was passed) the labels stay classes, so the
    # loss refuses them for a smaller model instead of training on void
    masks = build_vspw_train_dataset(root, num_frames=2, transform=transform)[0]["masks"]
    assert {129, 139} <= set(masks.unique().tolist())
    with pytest.raises(UserError, match=r"class id 139 .*model has 124 classes.*--num_classes"):
        VSSCriterion()({"pred_masks": torch.zeros(1, 124, 2, *masks.shape[-2:])}, masks[None])


# 2 ------------------------------------------------------------------------------------------
def test_two_files_of_one_frame_name_are_refused(tmp_path):
    root = write_vspw(tmp_path / "VSPW", {"a_val": ("val", 5)})
    origin = root / "data" / "a_val" / "origin"
    Image.open(origin / "00000003.jpg").save(origin / "00000003.png")
    for split in ("val", "train"):
        (root / f"{split}.txt").write_text("a_val\n")
    with pytest.raises(UserError, match=r"vspw: video a_val folder .*origin holds 00000003\.jpg and 00000003\.png: "
                                        "two frames of one name"):
        vspw_sequences(root, "val")
    with pytest.raises(UserError, match="two frames of one name"):
        build_vspw_train_dataset(root, num_frames=2)


# 3 ------------------------------------------------------------------------------------------
def test_unpadded_frame_numbers_are_in_natural_order(tmp_path):
    root = write_vspw(tmp_path / "VSPW", {"a_val": ("val", 11)})
    for sub, ext in (("origin", "jpg"), ("mask", "png")):
        for i in range(11):
            path = root / "data" / "a_val" / sub / f"{i:08d}.{ext}"
            path.rename(path.with_name(f"{i}.{ext}"))
    video = vspw_sequences(root, "val")[0]
    assert [f.stem for f in video.frames] == [str(i) for i in range(11)]
    assert [m.stem for m in video.masks] == [str(i) for i in range(11)]


# 4 ------------------------------------------------------------------------------------------
def test_a_video_missing_some_masks_is_refused_with_count_names_and_folder(tmp_path):
    root = write_vspw(tmp_path / "VSPW", {"a_val": ("val", 11)})
    mask_dir = root / "data" / "a_val" / "mask"
    for i in (1, 2, 4, 6, 8, 10):
        (mask_dir / f"{i:08d}.png").unlink()
    msg = (r"vspw: 6 of 11 frames of video a_val have no mask in .*a_val/mask, e\.g\. 00000001\.png, "
           r"00000002\.png, 00000004\.png …")
    with pytest.raises(FileNotFoundError, match=msg):
        vspw_sequences(root, "val")
    (root / "train.txt").write_text("a_val\n")
    with pytest.raises(FileNotFoundError, match=msg):
        build_vspw_train_dataset(root, num_frames=2)
    # listed without requiring masks (as the test split is), evaluation still refuses before predicting
    videos = vspw_sequences(root, "val", need_masks=False)
    assert sum(m is None for m in videos[0].masks) == 6
    with pytest.raises(FileNotFoundError, match=msg):
        _evaluate(_model(K), videos)


# 5 ------------------------------------------------------------------------------------------
def test_overlay_of_a_16_bit_frame_is_rescaled_as_the_model_input(tmp_path):
    root = write_vspw(tmp_path / "VSPW", {"a_test": ("test", 2)})
    origin = root / "data" / "a_test" / "origin"
    for i in range(2):
        (origin / f"{i:08d}.jpg").unlink()
        Image.fromarray(np.full((64, 80), 30000, np.uint16)).save(origin / f"{i:08d}.png")
    frame = vspw_sequences(root, "test")[0].frames[0]
    assert Image.open(frame).mode.startswith("I")  # a real 16-bit PNG
    labels = np.zeros((64, 80), np.uint8)
    grey = np.asarray(open_image(frame, "RGB"))
    assert grey.max() == 117  # 30000 / 257, as the model sees it (not clipped to 255)
    assert np.array_equal(overlay_colors(frame, labels), overlay_colors(grey, labels))


def test_a_video_listed_twice_in_a_split_file_is_refused(tmp_path):
    """val.txt naming a video twice: it was predicted and scored twice (the mIoU changed), counted once."""
    root = write_vspw(tmp_path / "VSPW", {"a_val": ("val", 3), "b_val": ("val", 3)})
    (root / "val.txt").write_text("a_val\nb_val\n\na_val\n")
    with pytest.raises(UserError, match=r"^vspw: .*val\.txt line 4: video a_val is listed again \(first on line 1\); "
                                        "delete one of the two lines$"):
        vspw_sequences(root, "val")
