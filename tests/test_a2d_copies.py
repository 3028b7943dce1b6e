"""A user's own A2D copy with damage the original would run on without a word: annotation files missing
(the test set silently shrinks: now said), an empty training annotation folder (an IndexError at a random step),
16-bit frames (washed-out overlays) and a repeated videoset.csv row (a video scored twice)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from actor_action.common import _save_viz
from datasets.a2d import A2DDataset, default_palette, make_synthetic_a2d
from datasets.video import open_image
from utils.cli import UserError


@pytest.fixture
def a2d(tmp_path):
    """vid000, vid001 train; vid002, vid003 test; frames 2, 5 and 9 annotated (#annotated 3)."""
    return make_synthetic_a2d(tmp_path / "A2D", num_train=2, num_test=2, num_frames=10, annotated=(2, 5, 9))


def test_missing_annotation_files_of_a_test_video_are_said_not_dropped_silently(a2d):
    """Two of vid002's three files deleted: the test set shrank without a word. The run now says which
    videos have fewer files than videoset.csv lists (not refused: nothing confirms that the release's
    videos all have as many files as they list)."""
    mat = a2d / "Release/Annotations/mat"
    for fid in ("00002", "00005"):
        (mat / "vid002" / f"{fid}.mat").unlink()
    test = A2DDataset(a2d, "test")
    assert len(test) == 4 and test.shortfall == (
        f"1 test videos have fewer annotation files than {a2d / 'Release/videoset.csv'} lists: vid002 (1 of 3); "
        "they are scored on the files found (those with none are left out)")
    assert A2DDataset(a2d, "train").shortfall is None  # the training videos are whole


def test_training_video_with_an_empty_annotation_folder_is_refused_when_built(a2d):
    """Training draws one annotated frame of each video: an empty folder stopped some later epoch with an
    IndexError (random.choice of nothing)."""
    for p in (a2d / "Release/Annotations/mat/vid000").iterdir():
        p.unlink()
    with pytest.raises(UserError, match=r"^a2d: training video vid000 has no annotation files \(<fid>\.mat\) in "
                                        r".*vid000 \(.*videoset\.csv lists 3\); restore them"):
        A2DDataset(a2d, "train")
    # Refused even where videoset.csv says the video has no annotated frame.
    csv_path = a2d / "Release/videoset.csv"
    csv_path.write_text(csv_path.read_text().replace("vid000,11,0,0,48,64,10,3,0", "vid000,11,0,0,48,64,10,0,0"))
    with pytest.raises(UserError, match=r"training video vid000 has no annotation files .*lists 0\)"):
        A2DDataset(a2d, "train")


def test_overlays_of_16_bit_frames_show_the_frame_as_the_model_sees_it(a2d, tmp_path):
    path = a2d / "frames/vid002/00005.png"
    grey16 = (np.asarray(Image.open(path).convert("L"), np.uint16) * 257)  # the same picture, 16-bit grey
    Image.fromarray(grey16).save(path)
    assert Image.open(path).mode.startswith("I")
    dataset = A2DDataset(a2d, "test")
    background = np.zeros(grey16.shape, np.int64)  # no foreground: the overlay is the frame itself
    _save_viz(tmp_path / "viz", dataset, {"name": "vid002", "frame": 5}, background, background, default_palette(),
              save_gt=True)
    overlay = np.asarray(Image.open(tmp_path / "viz/gt_overlay/vid002/00005.png"), np.float64)
    seen = np.asarray(open_image(path, "RGB"), np.float64)  # the model's input frame
    assert seen.mean() < 100  # a dark frame (PIL's own convert clips it to white)
    assert np.abs(overlay - seen).max() == 0


def test_a_repeated_videoset_row_is_refused_naming_the_file_and_video(a2d):
    csv_path = a2d / "Release/videoset.csv"
    csv_path.write_text(csv_path.read_text() + "vid003,46,0,0,48,64,10,3,1\n")
    with pytest.raises(UserError, match=r"videoset\.csv line 5: video vid003 is listed again \(first on line 4\)"):
        A2DDataset(a2d, "test")


def test_frames_numbered_from_0_are_refused_when_built(a2d):
    """Frames extracted with ffmpeg's -start_number 0 were read one frame off their annotations (scored),
    until the last one was found missing mid-run."""
    frames = a2d / "frames" / "vid002"
    for k in range(1, 11):  # 00001..00010 → 00000..00009
        (frames / f"{k:05d}.png").rename(frames / f"{k - 1:05d}.png")
    with pytest.raises(UserError, match=r"^a2d: .*vid002/00000\.png: the frames of video vid002 are numbered from 0, "
                                        r"but A2D's annotations count frames from 1 .*-start_number 1\)$"):
        A2DDataset(a2d, "test")
