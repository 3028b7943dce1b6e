"""AVSBench S4 (single-source) and MS3 (multi-source) clips, in the released layout (spec §B.8).

::

    <root>/Single-source/s4_meta_data.csv     columns: 0 name, 1 start, 2 category, "split"
    <root>/Single-source/s4_data/visual_frames/<split>/<category>/<name>/<name>_<1..5>.png
    <root>/Single-source/s4_data/audio_log_mel/<split>/<category>/<name>.pkl   pickled tensor [5,1,96,64]
    <root>/Single-source/s4_data/audio_wav/<split>/<category>/<name>.wav
    <root>/Single-source/s4_data/gt_masks/<split>/<category>/<name>/<name>_<i>.png  train i=1; else 1..5
    <root>/Multi-sources/ms3_meta_data.csv    column 0 name, "split"
    <root>/Multi-sources/ms3_data/visual_frames/<name>/<name>.mp4_<1..5>.png      (no split folder)
    <root>/Multi-sources/ms3_data/audio_log_mel/<split>/<name>.pkl
    <root>/Multi-sources/ms3_data/audio_wav/<split>/<name>.wav                   (assumed, as S4's)
    <root>/Multi-sources/ms3_data/gt_masks/<split>/<name>/<name>_<1..5>.png

``root`` may also be the task folder itself (the one holding the CSV). Audio comes from the
log-mel pickles (what the original reads) or, with ``audio="wav"``, is computed from the wavs
(``datasets.audio``; ``audio="auto"`` prefers the pickle). Frames: RGB → optional square resize
(bilinear) → ImageNet normalisation. Masks: binary (any non-zero grey level / palette index is
foreground, so 0/255 and 0/1 PNGs both give 0/1) → nearest resize, as PIL does for the
original's '1'/'P' modes.

Bad input raises :class:`AVSDataError` naming the path: missing frames, masks or audio, audio
of the wrong shape (frame-count mismatch), wrong sample rate, silent audio, and a log-mel pickle
holding anything but a tensor or array (:func:`load_log_mel` never runs code from a data file).
"""
from __future__ import annotations

import csv
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.cli import UserError

from .audio import AudioError, wav_to_clip_examples
from .path_config import check_listed_name, dataset_root, read_text_file, require
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .video import open_image

TASKS = {"s4": ("Single-source", "s4_meta_data.csv", "s4_data"),
         "ms3": ("Multi-sources", "ms3_meta_data.csv", "ms3_data")}
NUM_FRAMES = 5
NATIVE_SIZE = 224  # the released frames' size (im_size None keeps it)


class AVSDataError(UserError, ValueError):
    """An AVSBench clip that cannot be read; the message names the file."""


@dataclass
class AVSClip:
    name: str
    category: str | None
    split: str
    frames: list[Path]
    masks: list[Path]
    mask_frames: list[int]      # 0-based frame index of each mask
    log_mel: Path
    wav: Path


def task_dir(root: str | Path, task: str) -> Path:
    """The folder holding ``<task>_meta_data.csv`` under an AVSBench root (or the root itself)."""
    if task not in TASKS:
        raise ValueError(f"--task must be one of {sorted(TASKS)}, got {task!r}")
    sub, csv_name, _ = TASKS[task]
    root = require(dataset_root("avsbench", root), "avsbench")
    for d in (root / sub, root):
        if (d / csv_name).is_file():
            return d
    raise AVSDataError(f"{root}: no {sub}/{csv_name} (nor {csv_name}) found; pass the AVSBench root with "
                       f"--avsbench_root (it holds Single-source/ and Multi-sources/)")


def read_metadata(csv_path: Path, need_category: bool = False) -> list[dict]:
    """Rows of the metadata CSV as dicts with 'name', 'category' (S4) and 'split'.

    ``need_category`` (S4): every row must have a category in column 2 (0-based), as the original
    reads it by position; without it the clip's folder cannot be found."""
    reader = csv.reader(io.StringIO(read_text_file(csv_path, "avsbench: metadata", AVSDataError), newline=""))
    rows = [(reader.line_num, r) for r in reader]
    if not rows or "split" not in rows[0][1]:
        raise AVSDataError(f"{csv_path}: expected a header with a 'split' column")
    head = rows[0][1]
    si = head.index("split")
    if need_category and si == 2:
        raise AVSDataError(f"{csv_path}: column 3 is 'split', expected the columns name, start, category, "
                           f"split (the header is {', '.join(head)})")
    out = []
    for n, r in rows[1:]:
        if not r:
            continue
        # A short row would otherwise end in an IndexError, or a category of None, without the file's name.
        if len(r) <= max(si, 2 if need_category else 0):
            raise AVSDataError(f"{csv_path} line {n}: {len(r)} columns, expected the {len(head)} of the header "
                               f"({', '.join(head)})")
        category = r[2] if len(r) > 2 and si != 2 else None
        # Both name folders of the inputs and of the outputs (pred_masks/<category>/<name>); MS3's column 2
        # is no category (avsbench_clips does not read it)
        check_listed_name(r[0], f"{csv_path} line {n}", AVSDataError)
        if need_category:
            check_listed_name(category, f"{csv_path} line {n} (category)", AVSDataError)
        out.append({"name": r[0], "category": category, "split": r[si]})
    return out


def avsbench_clips(root: str | Path, task: str, split: str) -> list[AVSClip]:
    """All clips of a split, in CSV order (the original's order)."""
    d = task_dir(root, task)
    _, csv_name, data = TASKS[task]
    data = d / data
    clips = []
    for row in read_metadata(d / csv_name, need_category=task == "s4"):
        if row["split"] != split:
            continue
        n = row["name"]
        if task == "s4":
            c = row["category"]
            fdir, rel = data / "visual_frames" / split / c / n, Path(split) / c
            frames = [fdir / f"{n}_{i}.png" for i in range(1, NUM_FRAMES + 1)]
            mask_ids = [1] if split == "train" else list(range(1, NUM_FRAMES + 1))
        else:
            c = None
            fdir, rel = data / "visual_frames" / n, Path(split)
            frames = [fdir / f"{n}.mp4_{i}.png" for i in range(1, NUM_FRAMES + 1)]
            mask_ids = list(range(1, NUM_FRAMES + 1))
        mdir = data / "gt_masks" / rel / n
        clips.append(AVSClip(n, c, split, frames, [mdir / f"{n}_{i}.png" for i in mask_ids], [i - 1 for i in mask_ids],
                             data / "audio_log_mel" / rel / f"{n}.pkl", data / "audio_wav" / rel / f"{n}.wav"))
    if not clips:
        raise AVSDataError(f"{d / csv_name}: no clip with split == {split!r}")
    return clips


def _tensor_storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes`` (how ``pickle.dump`` stores a tensor's data), but with
    ``weights_only=True``: torch's own helper unpickles those bytes without that restriction."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class LogMelUnpickler(pickle.Unpickler):
    """Unpickles what AVSBench's ``audio_log_mel/*.pkl`` hold and nothing else: a torch tensor
    (``pickle.dump(tensor)``, the released files and :mod:`avs.preprocess_audio`) or a NumPy array.
    Any other global (``os.system``, ``builtins.eval``, ...) is refused, so no code from the file runs."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"),
        ("collections", "OrderedDict"),  # a tensor's (empty) backward hooks
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # NumPy 1.x pickles
        ("numpy._core.multiarray", "_reconstruct"),  # NumPy 2.x pickles
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _tensor_storage_from_bytes
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a log-mel file never holds")


def load_log_mel(path: Path, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """A pickled log-mel tensor [T, 1, 96, 64] (AVSBench's format), read with :class:`LogMelUnpickler`."""
    if not path.is_file():
        raise AVSDataError(f"{path}: audio log-mel file not found (make it with avs/preprocess_audio.py, "
                           "or read the wavs with --audio wav)")
    try:
        with open(path, "rb") as f:
            x = LogMelUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 -- a damaged or hostile pickle can raise almost anything
        raise AVSDataError(f"{path}: not a log-mel pickle of a tensor or array, refused ({e}); recreate it with "
                           "avs/preprocess_audio.py --overwrite, or read the wavs with --audio wav") from None
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise AVSDataError(f"{path}: holds a {type(x).__name__}, expected a log-mel tensor [T, 1, 96, 64]")
    # Real numbers only: strings and objects fail in the conversion, complex values would lose their
    # imaginary part and booleans become 0/1 without a word.
    real = not (x.is_complex() or x.dtype == torch.bool) if torch.is_tensor(x) else x.dtype.kind in "fiu"
    if not real:
        raise AVSDataError(f"{path}: holds an array of {x.dtype}, expected a real-valued log-mel tensor "
                           "[T, 1, 96, 64]; recreate it with avs/preprocess_audio.py --overwrite")
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x.detach()).float()
    if tuple(x.shape) != (num_frames, 1, 96, 64):
        raise AVSDataError(f"{path}: log-mel of shape {tuple(x.shape)}, expected ({num_frames}, 1, 96, 64): "
                           "one 0.96 s example per video frame")
    if not torch.isfinite(x).all():  # NaN or inf would reach the model and end in a clean-looking mIoU of 0
        raise AVSDataError(f"{path}: the log-mel holds {int((~torch.isfinite(x)).sum())} NaN or infinite values; "
                           "recreate it with avs/preprocess_audio.py --overwrite, or read the wavs with --audio wav")
    return x


def read_mask(path: Path, size: int | None) -> torch.Tensor:
    """Binary mask [h, w] float 0/1 (non-zero = foreground), nearest-resized to size × size."""
    if not path.is_file():
        raise AVSDataError(f"{path}: ground-truth mask not found")
    im = open_image(path)
    if im.mode not in ("1", "L", "P", "I", "I;16"):
        im = im.convert("L")
    m = Image.fromarray((np.array(im) > 0).astype(np.uint8) * 255)
    if size is not None:
        m = m.resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.array(m) > 0).float()


def read_frame(path: Path, size: int | None) -> torch.Tensor:
    if not path.is_file():
        raise AVSDataError(f"{path}: video frame not found (each clip needs {NUM_FRAMES} frames)")
    im = open_image(path, "RGB")
    if size is not None:
        im = im.resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


class AVSBenchDataset(Dataset):
    """Item: dict(frames [5,3,S,S], audio [5,1,96,64] log-mel, masks [M,S,S] float 0/1,
    mask_frames [M] long (S4 train: [0]; otherwise 0..4), name, category).

    Args:
        im_size: square size to resize to (None = native 224; the original S4 uses 384).
        audio: "log_mel" (pickles), "wav" (compute from the wavs) or "auto" (pickle if present).
        allow_resample / allow_silent: see :func:`datasets.audio.wav_to_clip_examples`.
    """

    def __init__(self, root: str | Path, task: str, split: str, im_size: int | None = None, audio: str = "log_mel",
                 allow_resample: bool = False, allow_silent: bool = False) -> None:
        if audio not in ("log_mel", "wav", "auto"):
            raise ValueError(f"--audio must be log_mel, wav or auto, got {audio!r}")
        self.clips = avsbench_clips(root, task, split)
        self.task, self.split, self.im_size, self.audio = task, split, im_size, audio
        self.allow_resample, self.allow_silent = allow_resample, allow_silent

    def __len__(self) -> int:
        return len(self.clips)

    def load_audio(self, clip: AVSClip) -> torch.Tensor:
        if self.audio == "log_mel" or (self.audio == "auto" and clip.log_mel.is_file()):
            return load_log_mel(clip.log_mel)
        if not clip.wav.is_file():
            raise AVSDataError(f"{clip.wav}: audio not found (neither this wav nor {clip.log_mel})")
        try:
            return wav_to_clip_examples(clip.wav, NUM_FRAMES, self.allow_resample, self.allow_silent)
        except AudioError as e:
            raise AVSDataError(str(e)) from e

    def __getitem__(self, i: int) -> dict:
        c = self.clips[i]
        return {
            "frames": torch.stack([read_frame(p, self.im_size) for p in c.frames]),
            "audio": self.load_audio(c),
            "masks": torch.stack([read_mask(p, self.im_size) for p in c.masks]),
            "mask_frames": torch.tensor(c.mask_frames, dtype=torch.long),
            "name": c.name,
            "category": c.category or "",
        }


def make_synthetic_avsbench(root: str | Path, task: str = "s4", counts: dict | None = None, size: int = 32,
                            seed: int = 0, write_wav: bool = True, write_log_mel: bool = True) -> Path:
    """Write a tiny AVSBench-format tree (frames, masks, 5 s 16 kHz wavs, log-mel pickles) for tests.

    Each clip shows a bright square whose position follows the audio's pitch; returns ``root``.
    """
    import wave

    from .audio import waveform_to_examples
    counts = counts or {"train": 2, "val": 1, "test": 1}
    rng = np.random.default_rng(seed)
    root = Path(root)
    sub, csv_name, data = TASKS[task]
    d = root / sub
    d.mkdir(parents=True, exist_ok=True)
    rows = [["vid", "uid", "s_min", "s_sec", "a_obj", "split"] if task == "ms3" else
            ["name", "start", "category", "split"]]
    k = 0
    for split, n in counts.items():
        for _ in range(n):
            name, cat = f"clip{k:03d}", ("dog" if k % 2 else "guitar")
            k += 1
            rows.append([name, name, "0", "0", "x", split] if task == "ms3" else [name, "0", cat, split])
            rel = Path(split) / cat if task == "s4" else Path(split)
            fdir = d / data / "visual_frames" / (rel if task == "s4" else Path()) / name
            mdir = d / data / "gt_masks" / rel / name
            fdir.mkdir(parents=True, exist_ok=True)
            mdir.mkdir(parents=True, exist_ok=True)
            mask_ids = [1] if (task == "s4" and split == "train") else range(1, NUM_FRAMES + 1)
            for i in range(1, NUM_FRAMES + 1):
                img = (rng.random((size, size, 3)) * 80).astype(np.uint8)
                m = np.zeros((size, size), np.uint8)
                y, x = rng.integers(0, size // 2, 2)
                m[y:y + size // 3, x:x + size // 3] = 255
                img[m > 0] = 220
                fname = f"{name}.mp4_{i}.png" if task == "ms3" else f"{name}_{i}.png"
                Image.fromarray(img).save(fdir / fname)
                if i in mask_ids:
                    Image.fromarray(m).save(mdir / f"{name}_{i}.png")
            t = np.arange(16000 * NUM_FRAMES) / 16000
            wav = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.01 * rng.standard_normal(t.shape)
            pcm = np.clip(np.round(wav * 32767), -32768, 32767).astype("<i2")
            if write_wav:
                p = d / data / "audio_wav" / rel / f"{name}.wav"
                p.parent.mkdir(parents=True, exist_ok=True)
                with wave.open(str(p), "wb") as f:
                    f.setnchannels(1)
                    f.setsampwidth(2)
                    f.setframerate(16000)
                    f.writeframes(pcm.tobytes())
            if write_log_mel:
                p = d / data / "audio_log_mel" / rel / f"{name}.pkl"
                p.parent.mkdir(parents=True, exist_ok=True)
                lm = torch.from_numpy(waveform_to_examples(pcm / 32768.0, 16000)).unsqueeze(1)
                with open(p, "wb") as f:
                    pickle.dump(lm, f)
    with open(d / csv_name, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root
