"""Malformed dataset files (CSV rows, colour maps, split lists, frames of two sizes, cut-short wavs):
each ends in a :class:`UserError` naming the file (and line), which ``run_main`` prints as one line."""
from __future__ import annotations

import wave

import numpy as np
import pytest
from PIL import Image

from datasets.a2d import A2DDataset, make_synthetic_a2d, read_color_map, read_videoset
from datasets.audio import read_wav
from datasets.avsbench import avsbench_clips, read_metadata
from datasets.moca import read_annotations
from datasets.stream import ImageFiles
from datasets.synthetic import make_synthetic_davis
from datasets.vspw import read_split, vspw_sequences
from tests.test_vss import write_vspw
from utils.cli import UserError


# A2D videoset.csv -------------------------------------------------------------------------
def test_a2d_videoset_non_number_names_file_line_and_column(tmp_path):
    csv_path = tmp_path / "videoset.csv"
    csv_path.write_text("vid000,11,0,0,48,64,10,2,0\nvid001,19,0,0,48,64,ten,2,1\n")
    with pytest.raises(UserError, match=r"videoset\.csv line 2: #frames 'ten' is not a whole number"):
        read_videoset(csv_path, "test")


# AVSBench metadata --------------------------------------------------------------------------
def test_avs_metadata_short_row_names_file_and_line(tmp_path):
    csv_path = tmp_path / "s4_meta_data.csv"
    csv_path.write_text("name,start,category,split\nclip000,0,guitar,train\nclip001,0,dog\n")
    with pytest.raises(UserError, match=r"s4_meta_data\.csv line 3: 3 columns, expected the 4 of the header"):
        read_metadata(csv_path)


def test_avs_metadata_without_category_column_names_file(tmp_path):
    d = tmp_path / "Single-source"
    d.mkdir()
    (d / "s4_meta_data.csv").write_text("name,category,split\nclip000,guitar,train\n")
    with pytest.raises(UserError, match=r"s4_meta_data\.csv: column 3 is 'split', expected the columns name, start"):
        avsbench_clips(tmp_path, "s4", "train")


# MoCA annotations.csv -----------------------------------------------------------------------
def test_moca_row_of_three_columns_names_file_and_line(tmp_path):
    csv_path = tmp_path / "annotations.csv"
    csv_path.write_text('id,file,bbox,motion\n1,/vid/00000.jpg,"[1, 5, 5, 20, 20]"\n')
    with pytest.raises(UserError, match=r"annotations\.csv line 2: .* does not have 4 columns"):
        read_annotations(csv_path)


def test_moca_bbox_of_three_values_names_file_and_line(tmp_path):
    csv_path = tmp_path / "annotations.csv"
    csv_path.write_text('id,file,bbox,motion\n1,/vid/00000.jpg,"[1, 5, 5, 20, 20]","{""1"": ""0""}"\n'
                        '2,/vid/00001.jpg,"[5, 20, 20]",{}\n')
    with pytest.raises(UserError, match=r"annotations\.csv line 3: bbox \[5, 20, 20\] is not \[shape_id"):
        read_annotations(csv_path)


# VSPW -------------------------------------------------------------------------------------
def test_vspw_empty_split_list_is_a_user_error(tmp_path):
    (tmp_path / "val.txt").write_text("\n")
    with pytest.raises(UserError, match=r"split list .*val\.txt names no video"):
        read_split(tmp_path, "val")


def test_vspw_masks_of_two_sizes_in_one_video_name_the_video_and_sizes(tmp_path):
    root = write_vspw(tmp_path, {"3_val_a": ("val", 3)}, size=(64, 80))
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(root / "data/3_val_a/mask/00000002.png")
    with pytest.raises(UserError, match=r"mask .*00000002\.png is 90x70 but mask 00000000\.png of the same video "
                                        r"3_val_a is 80x64"):
        vspw_sequences(root, "val")


@pytest.mark.parametrize("split", ["val", "test"])
def test_vspw_frames_of_two_sizes_in_one_video_name_the_frame_before_any_run(tmp_path, split):
    """Evaluation lists a video's frames at one size (header only); the training listing leaves the check
    to the clips (VSPWClips)."""
    root = write_vspw(tmp_path, {"3_val_a": (split, 4)}, size=(64, 80))
    Image.fromarray(np.zeros((72, 96, 3), np.uint8)).save(root / "data/3_val_a/origin/00000002.jpg")
    with pytest.raises(UserError, match=r"vspw: video 3_val_a: frames differ in size: 00000000\.jpg is 80x64 but "
                                        r"00000002\.jpg is 96x72"):
        vspw_sequences(root, split)
    assert len(vspw_sequences(root, split, one_size=False)[0].frames) == 4


def test_a_frame_of_another_size_is_named_when_read_not_resized_silently(tmp_path):
    """The safety net under every dataset path: a frame source stops at a frame of another size."""
    files = []
    for i, size in enumerate([(48, 64), (48, 64), (50, 70)]):
        files.append(tmp_path / f"{i:05d}.jpg")
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(files[-1])
    source = ImageFiles(files, (32, 32))
    with pytest.raises(UserError, match=r"frame .*00002\.jpg is 70x50 but frame 00000\.jpg of the same video is "
                                        r"64x48"):
        list(source)


def test_avos_inference_names_a_dataset_frame_of_another_size_before_any_output(tmp_path):
    import inference_swin_medvt_avos as script

    root = make_synthetic_davis(tmp_path / "DAVIS", num_train=0, num_val=1, num_frames=4)
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(root / "JPEGImages/480p/synth-val-00/00002.jpg")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"davis: sequence synth-val-00: frames differ in size: .*00002\.jpg is 70x50"):
        script.main(["--model_path", str(tmp_path / "none.pth"), "--davis16_root", str(root), "--output_dir", str(out)])
    assert not out.exists()  # before the checkpoint (which does not exist) is even read


# A2D frames and colour map ----------------------------------------------------------------
def test_a2d_frames_of_two_sizes_in_one_clip_name_the_frame_and_sizes(tmp_path):
    root = make_synthetic_a2d(tmp_path, num_train=0, num_test=1, num_frames=6, annotated=(2,))
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(root / "frames/vid000/00004.png")
    ds = A2DDataset(root, "test", num_frames=4, size=(16, 16))
    with pytest.raises(UserError, match=r"frame .*vid000/00004\.png is 80x60 but frame 00002\.png of the same clip "
                                        r"is 64x48"):
        ds[0]


@pytest.mark.parametrize("line, match", [
    ("adult 1 x red green blue", r"line 2: colour value 'red' is not a whole number"),
    ("adult 999 x 1 2 3", r"line 2: class id 999 is outside 0\.\.79"),
    ("adult one x 1 2 3", r"line 2: class id 'one' is not a whole number"),
])
def test_a2d_color_map_bad_line_names_file_and_line(tmp_path, line, match):
    path = tmp_path / "color_map.txt"
    path.write_text(f"header\n{line}\n")
    with pytest.raises(UserError, match=r"color_map\.txt " + match):
        read_color_map(path)


def test_a2d_color_map_binary_file_names_file(tmp_path):
    path = tmp_path / "color_map.txt"
    path.write_bytes(b"\xff\xfe\x00\x81\x82" * 10)
    with pytest.raises(UserError, match=r"color_map\.txt is not a text file"):
        read_color_map(path)


# Cut-short wavs ---------------------------------------------------------------------------
def _wav(path, frames: int = 1600) -> bytes:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes((np.arange(frames) % 100).astype("<i2").tobytes())
    return path.read_bytes()


@pytest.mark.parametrize("cut", [1001, 1000])  # odd: half a sample; even: whole samples missing
def test_cut_short_wav_names_the_file(tmp_path, cut):
    path = tmp_path / "clip.wav"
    data = _wav(path)
    path.write_bytes(data[:-cut])
    with pytest.raises(UserError, match=r"clip\.wav: the header declares 1600 frames \(3200 bytes\) but the file "
                                        r"holds \d+ bytes of audio; the file is cut short"):
        read_wav(path)


def test_complete_wav_still_reads(tmp_path):
    _wav(tmp_path / "ok.wav")
    x, sr = read_wav(tmp_path / "ok.wav")
    assert sr == 16000 and x.shape == (1600,)


# DAVIS-2016: a partial copy ------------------------------------------------------------------
def test_davis_partial_copy_names_the_list_and_the_flags_that_choose_fewer(tmp_path):
    """A copy with some of the listed sequences (e.g. two of the 20 val ones): the root is right, so the
    message names the list and the flags that choose the sequences there are, not --davis16_root."""
    import shutil

    import torch

    import inference_swin_medvt_avos as infer
    from datasets.davis16 import davis16_sequences
    from models import build_model
    from datasets.path_config import DatasetNotFoundError

    root = make_synthetic_davis(tmp_path / "DAVIS", num_train=1, num_val=3, num_frames=2, size_hw=(32, 48))
    shutil.rmtree(root / "Annotations" / "480p" / "synth-val-01")
    model = build_model("tiny")
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, ckpt)
    with pytest.raises(DatasetNotFoundError, match=r"^davis16: 1 of the 3 sequences listed in .*ImageSets/2016/"
                                                   r"val\.txt is not in .*Annotations/480p \(e\.g\. synth-val-01\): "
                                                   r"a partial copy of DAVIS\? Choose the sequences you have with "
                                                   r"--sequences NAME \.\.\. or --davis16_seqs_file$"):
        infer.main(["--model_path", str(ckpt), "--dataset", "davis", "--davis16_root", str(root), "--val_size", "32",
                    "--device", "cpu", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert [s.name for s in davis16_sequences(root, "val", only=["synth-val-00", "synth-val-02"])] == \
        ["synth-val-00", "synth-val-02"]  # the sequences there are, chosen
    with pytest.raises(DatasetNotFoundError, match=r"^davis16: --sequences synth-val-01: not in .*Annotations/480p, "
                                                   r"which holds 2 of the 3 sequences listed in .*val\.txt \(a "
                                                   r"partial copy of DAVIS\?\); name sequences it holds$"):
        davis16_sequences(root, "val", only=["synth-val-00", "synth-val-01"])  # one named is absent
    with pytest.raises(DatasetNotFoundError, match=r"--davis16_root PATH"):  # none of them: the root is wrong
        davis16_sequences(tmp_path, "val")
