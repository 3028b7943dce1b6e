"""A2D (Actor-Action Dataset, Xu et al. CVPR 2015) for actor-action segmentation.

On disk (spec a2d §A.7)::

    <root>/Release/videoset.csv                    no header; id, label, start, end, height, width,
                                                   #frames, #annotated, usage (0 = train, 1 = test)
    <root>/Release/Annotations/mat/<vid>/<fid>.mat one per annotated frame, fid = 5-digit 1-based
                                                   frame number; field ``reS_id`` = H×W label ids
    <root>/frames/<vid>/<fid>.png                  ALL frames, 5-digit 1-based (extract them from
                                                   Release/clips320H/<vid>.mp4 yourself)
    <root>/color_map.txt                           optional: header line, then ``name id _ R G B``

Labels (§A.3): the raw A2D id ``10·actor + action`` indexes the 80 output channels, 0 =
background; only the 43 ids of :data:`VALID_IDS` occur.

Clips (§A.7) are ``num_frames`` frames around an annotated frame ``g`` (context c = T/2):
``g ≤ c`` → frames g … g+T−1 (annotated index 0); otherwise g−c … g+c−1 (index c). The original's
third branch (``g + c > #frames``: only c frames, the annotated one missing, and the last one's
prediction scored in its place) is kept as ``end_window="original"``; by default (``"clamp"``) the
T-frame window is moved inside the video and the annotated index follows it. Frame numbers past the
ends of very short videos repeat the last frame.

Frames are read as uint8 RGB, /255, ImageNet-normalised and bilinearly resized (align_corners
False) to ``size`` (320 × 480, the aspect ratio is not kept), as the original. Training labels are
nearest-resized to ``size``; test labels keep the annotation size.

For the shared training loop the label of a clip is ``[T, H, W]`` with :data:`IGNORE_INDEX` on every
frame but the annotated one, so a loss that skips ignored pixels supervises exactly the
annotated frame, as the original (which supervises only ``pred[:, gt_index]``).
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from utils.cli import UserError

from .path_config import (DatasetNotFoundError, check_listed_name, check_listed_once, dataset_root, read_text_file,
                          require)
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from .video import check_pixel_count, image_size, open_image

NUM_CLASSES = 80
CLIP_SIZE = (320, 480)
ACTORS = {1: "adult", 2: "baby", 3: "ball", 4: "bird", 5: "car", 6: "cat", 7: "dog"}
ACTIONS = {1: "climbing", 2: "crawling", 3: "eating", 4: "flying", 5: "jumping", 6: "rolling", 7: "running",
           8: "walking", 9: "none"}
VALID_IDS: tuple[int, ...] = (
    11, 12, 13, 15, 16, 17, 18, 19, 21, 22, 26, 28, 29, 34, 35, 36, 39, 41, 43, 44, 45, 46, 48, 49,
    54, 55, 56, 57, 59, 61, 63, 65, 66, 67, 68, 69, 72, 73, 75, 76, 77, 78, 79)
assert len(VALID_IDS) == 43


def class_name(label_id: int) -> str:
    """``"adult-climbing"`` for 11, ``"background"`` for 0, ``"id<k>"`` for an id A2D does not use."""
    if label_id == 0:
        return "background"
    actor, action = ACTORS.get(label_id // 10), ACTIONS.get(label_id % 10)
    return f"{actor}-{action}" if actor and action else f"id{label_id}"


def default_palette() -> np.ndarray:
    """[80, 3] uint8 colours: black background, one distinct colour per valid id (deterministic)."""
    pal = np.zeros((NUM_CLASSES, 3), np.uint8)
    rng = np.random.default_rng(0)
    for i in VALID_IDS:
        pal[i] = rng.integers(40, 256, 3)
    return pal


def read_color_map(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """The original's ``color_map.txt``: header, then ``name id <ignored> R G B`` per line.

    Returns (names [80], palette [80, 3] uint8); ids not listed keep :func:`class_name` and black.
    """
    path = require(path, "a2d", "color_map.txt: a header line, then 'name id _ R G B' per line", is_file=True)
    names = [class_name(i) for i in range(NUM_CLASSES)]
    pal = np.zeros((NUM_CLASSES, 3), np.uint8)
    lines = read_text_file(path, "a2d: colour map").splitlines()
    for n, line in enumerate(lines[1:], 2):
        tok = line.split()
        if len(tok) >= 6:
            where = f"colour map {path} line {n}"
            label_id = _int_field(tok[1], where, "class id", NUM_CLASSES - 1)
            names[label_id] = tok[0]
            pal[label_id] = [_int_field(v, where, "colour value", 255) for v in tok[3:6]]
    return names, pal


def _int_field(text: str, where: str, what: str, high: int | None = None) -> int:
    """``int(text)``, checked to lie in 0..``high``; else a UserError naming ``where`` (file and line):
    a malformed dataset file ends in one line naming it, not in int()'s or an index's traceback."""
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"a2d: {where}: {what} {text!r} is not a whole number") from None
    if high is not None and not 0 <= value <= high:
        raise UserError(f"a2d: {where}: {what} {value} is outside 0..{high}")
    return value


VIDEOSET_COLUMNS = ("id", "label", "start", "end", "height", "width", "#frames", "#annotated", "usage")


@dataclass(frozen=True)
class A2DVideo:
    """One row of ``videoset.csv`` (the columns the original keeps)."""

    vid: str
    label: int
    height: int
    width: int
    num_frames: int
    num_annotated: int


def a2d_root(override: str | os.PathLike | None = None) -> Path:
    """The checked A2D root (``--a2d_root`` / ``MEDVT_A2D_ROOT`` / ``$MEDVT_DATA_ROOT/A2D``)."""
    root = require(dataset_root("a2d", override), "a2d")
    require(root / "Release" / "videoset.csv", "a2d", "the split file Release/videoset.csv", is_file=True)
    require(root / "Release" / "Annotations" / "mat", "a2d", "annotations Release/Annotations/mat/<vid>/<fid>.mat")
    require(root / "frames", "a2d",
            "all frames as frames/<vid>/00001.png … (extract them from Release/clips320H/*.mp4)")
    return root


def read_videoset(csv_path: str | os.PathLike, split: str) -> list[A2DVideo]:
    """Videos of ``split`` ("train": usage ≠ 1, "test": usage ≠ 0, the original's rule) in file order."""
    if split not in ("train", "test"):
        raise ValueError(f"a2d split must be 'train' or 'test', not {split!r}")
    drop = 1 if split == "train" else 0
    videos = []
    first_line: dict[str, int] = {}
    text = read_text_file(csv_path, "a2d: video list")
    for n, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        if not row:
            continue
        if len(row) < 9:
            raise DatasetNotFoundError(f"a2d: {csv_path} line {n} has {len(row)} columns, expected 9 "
                                       "(id, label, start, end, height, width, #frames, #annotated, usage)")
        where = f"{csv_path} line {n}"
        check_listed_name(row[0], f"a2d: {where}")
        check_listed_once(first_line, row[0], n, f"a2d: {csv_path}", "rows")  # (or a test video in training)
        label, height, width, frames, annotated, usage = (
            _int_field(row[k], where, VIDEOSET_COLUMNS[k]) for k in (1, 4, 5, 6, 7, -1))
        if usage != drop:
            videos.append(A2DVideo(row[0], label, height, width, frames, annotated))
    return videos


def annotated_frames(gt_dir: Path) -> list[int]:
    """Annotated frame numbers of one video, sorted (the original used unsorted ``os.listdir``)."""
    if not gt_dir.is_dir():
        raise DatasetNotFoundError(f"a2d: annotation folder {gt_dir} is missing (expected <fid>.mat files; "
                                   "set the root with --a2d_root or MEDVT_A2D_ROOT)")
    frames = []
    for p in gt_dir.iterdir():
        # Hidden files are left out, as frame folders' (macOS writes ._<name> metadata beside each file).
        if p.suffix != ".mat" or p.name.startswith("."):
            continue
        if not (p.stem.isascii() and p.stem.isdigit()):  # a copy such as "00003 copy.mat" names no frame
            raise UserError(f"a2d: annotation {p} is not named by a frame number (<fid>.mat, e.g. 00005.mat); "
                            f"move it out of {gt_dir}")
        frames.append(int(p.stem))
    return sorted(frames)


def annotation_shortfall(video: A2DVideo, frames: list[int], gt_dir: Path, split: str,
                         csv_path: Path) -> str | None:
    """Where the folder ``gt_dir`` of a video of ``split`` holds fewer annotations (``frames``) than
    videoset.csv's #annotated: "<video> (found of listed)", for the run to say (the original lists the
    folder and never reads #annotated, so deleted files silently shrank the test set and changed its
    score). Not refused: nothing here confirms that every video of the release has as many files as it
    lists. A training video with none is refused: training draws one of its frames each epoch, and the
    empty choice stopped some later epoch with an IndexError."""
    if split == "train" and not frames:
        raise UserError(f"a2d: training video {video.vid} has no annotation files (<fid>.mat) in {gt_dir} "
                        f"({csv_path} lists {video.num_annotated}); restore them from the A2D release, or delete "
                        "the video's row from videoset.csv to train without it")
    if len(frames) < video.num_annotated:
        return f"{video.vid} ({len(frames)} of {video.num_annotated})"
    return None


def check_mat_header(path: str | os.PathLike) -> bytes:
    """The first 520 bytes of a MATLAB file, or a UserError naming ``path`` when they are not one's:
    MATLAB v5/v7 and v7.3 (HDF5) files both open with a 128-byte header whose last two bytes are the
    endian mark "IM" or "MI". An empty file, text or an image under a .mat name fail here, from its
    first bytes, so that a whole dataset can be checked before training (reading every label map
    would take minutes)."""
    with open(path, "rb") as f:
        head = f.read(520)
    if head[126:128] not in (b"IM", b"MI"):
        raise UserError(f"a2d: annotation {path} is not a MATLAB file ({len(head)} bytes read, no MAT-file "
                        "header); replace it with the dataset's original")
    return head


# MATLAB classes of a numeric label map (a logical one reads as 0/1 ids); char, cell, struct, sparse, ... are not one.
NUMERIC_MATLAB_CLASSES = {"double", "single", "logical", *(f"{u}int{b}" for u in ("", "u") for b in (8, 16, 32, 64))}


def _check_label_map(path: Path, shape: tuple[int, ...], matlab_class: str | None, numeric: bool,
                     size_hw: tuple[int, int] | None) -> None:
    """Refuse, from the file's declarations and before its data is read, a ``reS_id`` that is no H×W
    numeric map, that has not the shape of ``size_hw`` (its frame's height and width), or that is larger than any
    frame may be: a 2 KB file can declare a chunked 40000×40000 map, which reading would allocate."""
    if (matlab_class is not None and matlab_class not in NUMERIC_MATLAB_CLASSES) or not numeric:
        raise UserError(f"a2d: annotation {path}: 'reS_id' is a MATLAB {matlab_class or 'non-numeric'} array, "
                        "not a numeric label map; replace it with the dataset's original")
    if len(shape) != 2:
        raise UserError(f"a2d: annotation {path}: 'reS_id' has shape {tuple(shape)}, not a 2-D label map (H×W)")
    h, w = (int(n) for n in shape)
    # The prediction is resized to the label map for scoring, so frames extracted at another resolution
    # are scored as before; a map of another shape (a 2x2 map for a 48x64 video) would score it squashed.
    if size_hw is not None and (min(h, w) < 1 or abs(math.log((w / h) / (size_hw[1] / size_hw[0]))) > 0.05):
        raise UserError(f"a2d: annotation {path} is {w}x{h} but its video's frames are {size_hw[1]}x{size_hw[0]}, "
                        "another shape; a label map must be its frame's (replace it with the dataset's original)")
    check_pixel_count(w, h, f"a2d: annotation {path}")


def read_annotation(path: str | os.PathLike, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The ``reS_id`` label map of one annotation file as int64 [H, W]; ``size_hw``: the size it must have
    (its frame's), checked with its type before the data is read (:func:`_check_label_map`).

    A2D ships MATLAB v7.3 (HDF5) files, read with ``h5py`` and transposed (HDF5 stores MATLAB's
    column-major arrays with reversed axes); older MATLAB v5 files are read with scipy.
    """
    path = Path(path)
    hdf5 = check_mat_header(path)[512:520] == b"\x89HDF\r\n\x1a\n"
    if hdf5:
        try:
            import h5py
        except ImportError:
            raise ImportError(f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py (pip install h5py)") \
                from None
    try:
        if hdf5:
            with h5py.File(path, "r") as f:
                data = f["reS_id"]
                if not isinstance(data, h5py.Dataset):  # a MATLAB struct is an HDF5 group
                    raise UserError(f"a2d: annotation {path}: 'reS_id' is a MATLAB struct, not a numeric label map")
                matlab_class = data.attrs.get("MATLAB_class")
                _check_label_map(path, data.shape[::-1],
                                 matlab_class.decode() if isinstance(matlab_class, bytes) else matlab_class,
                                 data.dtype.kind in "fiub", size_hw)
                arr = np.asarray(data).T
        else:
            from scipy.io import loadmat, whosmat

            declared = {name: (shape, cls) for name, shape, cls in whosmat(path)}
            _check_label_map(path, *declared["reS_id"], True, size_hw)
            arr = loadmat(path, variable_names=["reS_id"])["reS_id"]
    except UserError:  # ours, already naming the file (an ImageReadError is an OSError too)
        raise
    except KeyError:
        raise UserError(f"a2d: annotation {path} has no 'reS_id' label map") from None
    except (OSError, ValueError, TypeError) as e:  # truncated or not a MATLAB file
        raise UserError(f"a2d: annotation {path} is not a readable MATLAB file ({e})") from None
    arr = np.rint(arr).astype(np.int64)
    bad = np.unique(arr[(arr < 0) | (arr >= NUM_CLASSES)])
    if bad.size:  # they would index past the 80-way head and the metric tables
        raise UserError(f"a2d: annotation {path} has label ids {bad[:5].tolist()} outside 0..{NUM_CLASSES - 1} "
                        "(A2D's actor*10 + action ids)")
    return arr


def clip_frame_ids(g: int, num_video_frames: int, num_frames: int = 6,
                   end_window: str = "clamp") -> tuple[list[int], int]:
    """1-based frame numbers of the clip around annotated frame ``g`` and the annotated index.

    ``end_window="clamp"`` (default) moves the window inside the video near its end;
    ``"original"`` reproduces the original's near-end branch (c frames g−c … g−1, index −1: the frame
    before the annotated one stands in for it; spec a2d §A.10 #2).
    """
    c = num_frames // 2
    if g - c < 1:
        start, idx = g, 0
    elif g + c > num_video_frames:
        if end_window == "original":
            return list(range(g - c, g)), -1
        start = max(1, num_video_frames - num_frames + 1)
        idx = g - start
    else:
        start, idx = g - c, c
    ids = [min(start + i, max(num_video_frames, g)) for i in range(num_frames)]
    return ids, idx


def load_clip(paths: list[Path], size: tuple[int, int] | None = CLIP_SIZE) -> Tensor:
    """Frames → [T, 3, H, W]: uint8 RGB / 255, ImageNet-normalised, bilinear resize (align_corners False)."""
    for p in paths:
        if not p.is_file():
            raise DatasetNotFoundError(f"a2d: frame {p} is missing (frames/<vid>/<5-digit fid>.png, 1-based; "
                                       "extract all frames of Release/clips320H/<vid>.mp4)")
    arrays = [np.asarray(open_image(p, "RGB")) for p in paths]
    for p, a in zip(paths[1:], arrays[1:]):  # torch.stack would fail without naming the clip or file
        if a.shape != arrays[0].shape:
            raise UserError(f"a2d: frame {p} is {a.shape[1]}x{a.shape[0]} but frame {paths[0].name} of the same "
                            f"clip is {arrays[0].shape[1]}x{arrays[0].shape[0]}; all frames of a video must "
                            "have one size (re-extract them from Release/clips320H/<vid>.mp4)")
    x = torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays])
    x = x.float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


class A2DDataset(Dataset):
    """A2D clips. ``split="train"``: one item per video, a random annotated frame per access;
    ``"test"``: one item per annotated frame (videos in CSV order, frames sorted).

    Item: ``frames`` [T, 3, H, W]; ``masks`` [T, h, w] long (the label on frame ``gt_index``,
    :data:`IGNORE_INDEX` elsewhere; train: resized to ``size``, test: annotation size);
    ``label`` [h, w] long (the annotated frame's labels); ``gt_index``; ``name`` (video id);
    ``frame`` (annotated frame number); ``centre`` (= frame, for the engine's error messages).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", num_frames: int = 6,
                 size: tuple[int, int] | None = CLIP_SIZE, end_window: str = "clamp", seed: int | None = None) -> None:
        self.root = Path(root)
        self.split, self.num_frames, self.size, self.end_window = split, num_frames, size, end_window
        csv_path = self.root / "Release" / "videoset.csv"
        self.videos = read_videoset(csv_path, split)
        if not self.videos:
            raise DatasetNotFoundError(f"a2d: {csv_path} lists no {split} video")
        self.gt_root = self.root / "Release" / "Annotations" / "mat"
        self.frame_root = self.root / "frames"
        self.annotated = {v.vid: annotated_frames(self.gt_root / v.vid) for v in self.videos}
        short = [s for v in self.videos
                 if (s := annotation_shortfall(v, self.annotated[v.vid], self.gt_root / v.vid, split, csv_path))]
        # what the run says (e.g. in its first lines), or None
        self.shortfall = (f"{len(short)} {split} videos have fewer annotation files than {csv_path} lists: "
                          f"{', '.join(short[:5])}{' …' if len(short) > 5 else ''}; they are "
                          f"{'scored' if split == 'test' else 'used'} on the files found (those with none are "
                          "left out)") if short else None
        for v in self.videos:  # frames extracted from 0 would be read one off each annotation, then one missing
            if (self.frame_root / v.vid / "00000.png").is_file():
                raise UserError(f"a2d: {self.frame_root / v.vid / '00000.png'}: the frames of video {v.vid} are "
                                "numbered from 0, but A2D's annotations count frames from 1 (<fid>.mat of frame "
                                "<fid>.png); extract them again numbered from 1 (ffmpeg's -start_number 1)")
        self.items = [(v, g) for v in self.videos for g in self.annotated[v.vid]]
        for video, g in self.items:  # a damaged file would otherwise surface in some later epoch
            check_mat_header(self.gt_root / video.vid / f"{g:05d}.mat")
        # seed=None: the module-level ``random``, which DataLoader reseeds in every worker (a private
        # Random would be copied into each worker and draw the same frames there).
        self.rng = random.Random(seed) if seed is not None else random

    def __len__(self) -> int:
        return len(self.videos) if self.split == "train" else len(self.items)

    def __getitem__(self, i: int) -> dict:
        if self.split == "train":
            video = self.videos[i]
            g = self.rng.choice(self.annotated[video.vid])
        else:
            video, g = self.items[i]
        ids, idx = clip_frame_ids(g, video.num_frames, self.num_frames, self.end_window)
        paths = [self.frame_root / video.vid / f"{k:05d}.png" for k in ids]
        frames = load_clip(paths, self.size)
        w, h = image_size(paths[0])  # the frames' size (one per clip, load_clip checked): the label map's too
        label = torch.from_numpy(read_annotation(self.gt_root / video.vid / f"{g:05d}.mat", (h, w)))
        if self.split == "train" and self.size is not None:
            label = F.interpolate(label[None, None].float(), size=self.size, mode="nearest")[0, 0].long()
        masks = torch.full((len(ids), *label.shape), IGNORE_INDEX, dtype=torch.long)
        masks[idx] = label
        return {"frames": frames, "masks": masks, "label": label, "gt_index": idx % len(ids),
                "name": video.vid, "frame": g, "centre": g}


def make_synthetic_a2d(root: str | os.PathLike, num_train: int = 2, num_test: int = 2, num_frames: int = 10,
                       size_hw: tuple[int, int] = (48, 64), annotated: tuple[int, ...] = (2, 5, 9),
                       seed: int = 0) -> Path:
    """Write a tiny A2D-layout dataset (PNG frames, MATLAB v5 ``reS_id`` annotations, videoset.csv).

    Each video shows one moving square of a valid actor-action id on noise; deterministic by seed.
    """
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size_hw
    rows = []
    for n in range(num_train + num_test):
        vid = f"vid{n:03d}"
        label = VALID_IDS[(7 * n) % len(VALID_IDS)]
        (root / "frames" / vid).mkdir(parents=True, exist_ok=True)
        (root / "Release" / "Annotations" / "mat" / vid).mkdir(parents=True, exist_ok=True)
        for k in range(1, num_frames + 1):
            img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            y, x = (3 * k + 4 * n) % (h - 16), (5 * k + 3 * n) % (w - 16)
            img[y:y + 16, x:x + 16] = (np.array([label * 3 % 256, 200, 255 - label]) % 256).astype(np.uint8)
            Image.fromarray(img).save(root / "frames" / vid / f"{k:05d}.png")
            if k in annotated:
                ids = np.zeros((h, w), np.float64)
                ids[y:y + 16, x:x + 16] = label
                savemat(root / "Release" / "Annotations" / "mat" / vid / f"{k:05d}.mat", {"reS_id": ids})
        written = sum(1 <= k <= num_frames for k in annotated)  # #annotated must count the files written
        rows.append([vid, label, 0, 0, h, w, num_frames, written, 0 if n < num_train else 1])
    with open(root / "Release" / "videoset.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root
