"""DAVIS-16 loading, training clips and augmentation, the synthetic set, path errors."""
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion

from datasets.avos import build_avos_train_dataset
from datasets.davis16 import DAVIS16_SPLITS, davis16_sequences, read_sequence_list
from datasets.path_config import DatasetNotFoundError
from datasets.synthetic import make_synthetic_davis
from datasets.transforms import TrainTransform, denormalize, load_frames, test_size


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    return make_synthetic_davis(tmp_path_factory.mktemp("davis"), num_train=2, num_val=1, num_frames=8,
                                size_hw=(48, 80), seed=3)


def test_synthetic_set_is_deterministic_and_in_davis_layout(davis, tmp_path):
    again = make_synthetic_davis(tmp_path, num_train=2, num_val=1, num_frames=8, size_hw=(48, 80), seed=3)
    other = make_synthetic_davis(tmp_path / "other", num_train=2, num_val=1, num_frames=8, size_hw=(48, 80), seed=4)
    rel = "JPEGImages/480p/synth-train-01/00005.jpg"
    assert np.array_equal(np.asarray(Image.open(davis / rel)), np.asarray(Image.open(again / rel)))
    assert not np.array_equal(np.asarray(Image.open(davis / rel)), np.asarray(Image.open(other / rel)))
    gt = np.asarray(Image.open(davis / "Annotations/480p/synth-train-01/00005.png"))
    assert set(np.unique(gt)) == {0, 255} and 0.05 < (gt > 0).mean() < 0.6
    assert (davis / "ImageSets/2016/val.txt").read_text().split() == ["synth-val-00"]


def test_davis_sequences_follow_the_split_files(davis):
    (val,) = davis16_sequences(davis, "val")
    assert val.name == "synth-val-00" and val.num_frames == 8
    assert [p.name for p in val.frames[:2]] == ["00000.jpg", "00001.jpg"]
    assert val.read_mask(0).dtype == bool and val.read_mask(0).shape == (48, 80)
    train = davis16_sequences(davis, "train")
    assert [s.name for s in train] == ["synth-train-00", "synth-train-01"]


def test_davis16_release_list_format_and_builtin_names(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png\n"
                 "/JPEGImages/480p/bear/00001.jpg /Annotations/480p/bear/00001.png\n"
                 "/JPEGImages/480p/boat/00000.jpg /Annotations/480p/boat/00000.png\n")
    assert read_sequence_list(f) == ["bear", "boat"]
    assert len(DAVIS16_SPLITS["train"]) == 30 and len(DAVIS16_SPLITS["val"]) == 20
    assert not set(DAVIS16_SPLITS["train"]) & set(DAVIS16_SPLITS["val"])


def test_missing_root_names_path_flag_and_variable(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        davis16_sequences(tmp_path / "nowhere", "val")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "--davis16_root" in msg and "MEDVT_DAVIS16_ROOT" in msg


def test_missing_sequence_folder_is_named(davis, tmp_path):
    lst = tmp_path / "val.txt"
    lst.write_text("synth-val-00\nnot-a-sequence\n")
    with pytest.raises(DatasetNotFoundError, match="not-a-sequence"):
        davis16_sequences(davis, "val", seqs_file=lst)


def test_a_frame_without_annotation_is_named_not_dropped(tmp_path):
    """Frames are listed from the annotations: a frame whose annotation is missing (a partial copy)
    would drop out of its video and its neighbours' clips would skip over it."""
    root = make_synthetic_davis(tmp_path, num_train=0, num_val=1, num_frames=5, size_hw=(32, 32), seed=0)
    (root / "Annotations/480p/synth-val-00/00003.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 frames of synth-val-00 have no annotation, e.g. .*00003.png"):
        davis16_sequences(root, "val")


def test_training_clips_wrap_around_and_masks_match_frames(davis):
    ds = build_avos_train_dataset(davis, num_frames=6, transform=TrainTransform.small(40, seed=0))
    assert len(ds) == 16  # every frame of the two training sequences is a centre
    item = ds[0]  # centre 0: list positions 5, 6, 7, 0, 1, 2
    assert item["frames"].shape[:2] == (6, 3) and item["masks"].shape[0] == 6
    assert item["frames"].shape[-2:] == item["masks"].shape[-2:] and min(item["masks"].shape[-2:]) == 40
    assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}
    assert item["name"] == "synth-train-00" and item["centre"] == 0


def test_augmentation_keeps_masks_on_the_object():
    # A saturated square on grey. Every photometric step keeps grey pixels grey (equal channels),
    # so after augmentation the mask must cover exactly the coloured pixels (up to the border).
    img = np.full((120, 200, 3), 128, np.uint8)
    img[30:90, 20:100] = (230, 40, 40)
    mask = np.zeros((120, 200), bool)
    mask[30:90, 20:100] = True
    tf = TrainTransform.small(64, seed=1)
    checked = 0
    for _ in range(8):
        frames, masks = tf([Image.fromarray(img)] * 2, [mask] * 2)
        rgb = denormalize(frames)[1].astype(int)
        saturation = rgb.max(-1) - rgb.min(-1)
        m = masks[1].numpy() > 0.5
        inner = binary_erosion(m, iterations=2)
        outer = ~binary_dilation(m, iterations=2)
        if inner.sum() < 10 or outer.sum() < 10:
            continue
        checked += 1
        assert saturation[inner].mean() > 40 and saturation[outer].mean() < 8
    assert checked >= 3


def test_test_size_matches_the_original_rule():
    assert test_size(480, 854, 473) == (473, 841)  # DAVIS eval size, spec §1.1
    assert test_size(720, 1280, 473) == (473, 840)  # MoCA
    assert test_size(480, 854, 473, 1.65) == (438, 779)  # ResNet --msc cap int(1.65*473) = 780, spec §6.1
    assert test_size(100, 400, 50) == (22, 88)  # long side capped at int(1.8 * 50) = 90


def test_load_frames_normalises(davis):
    (val,) = davis16_sequences(davis, "val")
    x = load_frames(val.frames[:3], (32, 40))
    assert x.shape == (3, 3, 32, 40) and x.dtype == torch.float32
    assert -2.5 < x.min() < x.max() < 2.7
