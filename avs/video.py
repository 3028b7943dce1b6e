"""MED-VT++ on a user's video and its sound (``avs/test_medvt.py --video``): every frame's mask of
what makes the sound, streamed.

AVSBench's clips are 5 frames one second apart, each paired with a 0.96 s log-mel example; the
examples follow one another (example k starts at 0.96·k s into the clip). A video of any length
and frame rate is cut the same way, so that every frame is predicted and each forward still sees
what the model was trained on:

* the video is split into blocks of T seconds (T = the model's 5 frames), the last one moved back
  to end with the video (a video shorter than T seconds repeats its last frame, as AVSBench's
  preprocessing repeats its last audio example);
* a frame at time t, second ``p`` of its block, is predicted in the clip of the frames nearest to
  t − p, t − p + 1, …, t − p + T − 1 seconds, at position p; frames whose clips coincide share one
  forward (at an integer frame rate F every clip serves T frames: n / T forwards);
* the clip starting at s seconds gets the log-mel examples starting at s, s + 0.96, … s + 0.96·(T−1)
  seconds of the whole sound track (10 ms steps), the pairing of an AVSBench clip.

A block holds at most T seconds of frames, at the model's size and as RGB for the overlay, so
memory depends on the frame rate and size, not on the video's length.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from datasets.audio import (EXAMPLE_FRAMES, HOP_SAMPLES, SAMPLE_RATE, AudioError, log_mel_spectrogram, read_mono_16k,
                            read_soundtrack)
from datasets.stream import ImageFiles, VideoFile, open_video
from models.predictor import VideoPredictor
from utils.background import BackgroundWorker
from utils.cli import UserError, require_file
from utils.logger import Throughput
from utils.visualize import VideoWriter, overlay

EXAMPLE_SECONDS = EXAMPLE_FRAMES * HOP_SAMPLES / SAMPLE_RATE  # 0.96
FRAMES_PER_SECOND = SAMPLE_RATE / HOP_SAMPLES  # log-mel frames: 100 per second


class Clip(NamedTuple):
    """One forward: the frame indices fed (one second apart), frame → position kept, start time (s)."""

    frames: tuple[int, ...]
    keep: dict[int, int]
    start_s: float


def plan_blocks(n: int, fps: float, t: int, times: Sequence[float] | None = None) -> list[tuple[range, list[Clip]]]:
    """The blocks of a video of ``n`` frames at ``fps``: (the frames each predicts, its clips). ``times``:
    each frame's time in seconds (a variable-frame-rate video's :attr:`VideoFile.times`); else i / fps."""
    if times is None:
        at = [i / fps for i in range(n)]
        duration = n / fps

        def nearest(s: float) -> int:
            return min(n - 1, max(0, round(s * fps)))
    else:
        at = [float(x) for x in times]
        duration = at[-1] + (at[-1] / (n - 1) if n > 1 else 1 / fps)  # the last frame lasts the mean frame time

        def nearest(s: float) -> int:
            j = bisect_left(at, s)  # at[j - 1] < s <= at[j]: the nearer of the two
            return min((k for k in (j - 1, j) if 0 <= k < n), key=lambda k: abs(at[k] - s))

    block_of = [int(a // t) for a in at]
    blocks, first = [], 0
    while first < n:
        end = first
        while end < n and block_of[end] == block_of[first]:
            end += 1
        start = float(block_of[first] * t)
        if start + t > duration:  # the last block ends with the video (or starts at 0 in a short one)
            start = max(0.0, duration - t)
        clips: dict[tuple[int, ...], Clip] = {}
        for i in range(first, end):
            pos = min(t - 1, int(at[i] - start))
            s = at[i] - pos
            frames = tuple(i if k == pos else nearest(s + k) for k in range(t))  # i itself, whatever the rounding
            clips.setdefault(frames, Clip(frames, {}, s)).keep[i] = pos
        blocks.append((range(first, end), list(clips.values())))
        first = end
    return blocks


class SoundTrack:
    """The log-mel frames [L, 64] of a whole sound track, cut into the examples a clip needs, and its
    16 kHz mono samples (what the model hears), which the overlay video plays."""

    def __init__(self, samples: np.ndarray, what: str) -> None:
        if not np.any(samples):
            raise AudioError(f"{what}: the sound is silent (all samples zero); MED-VT++ needs the sound")
        self.samples = np.asarray(samples, np.float32)  # 64 kB a second: an hour's fits in memory, as its log-mel
        self.log_mel = log_mel_spectrogram(samples).astype(np.float32)
        if len(self.log_mel) < EXAMPLE_FRAMES:
            raise AudioError(f"{what}: the sound lasts {len(samples) / SAMPLE_RATE:.2f} s, shorter than one "
                             f"{EXAMPLE_SECONDS} s example")
        self.seconds = len(samples) / SAMPLE_RATE

    def examples(self, start_s: float, t: int) -> torch.Tensor:
        """[t, 1, 96, 64]: the examples starting at start_s + 0.96·k s (the last whole one past the end)."""
        last = len(self.log_mel) - EXAMPLE_FRAMES
        starts = [min(last, max(0, round((start_s + k * EXAMPLE_SECONDS) * FRAMES_PER_SECOND))) for k in range(t)]
        return torch.from_numpy(np.stack([self.log_mel[a:a + EXAMPLE_FRAMES] for a in starts]))[:, None]


def open_user_video(path: Path, wav: Path | None, fps: float | None, im_size: int) -> tuple[ImageFiles | VideoFile,
                                                                                           SoundTrack, float]:
    """``--video`` (a file, or a folder of frames with ``--fps``) and its sound (the file's track, or
    ``--wav``), both checked before anything is written; frames resized to im_size × im_size."""
    if wav is not None:
        require_file(wav, "--wav")
    source = open_video(path, lambda _h, _w: (im_size, im_size), keep_rgb=True, flag="--video", min_frames=2,
                        tail_keep=1)
    if fps is not None and source.fps is not None:
        raise UserError(f"--fps is for a folder of frames; --video {path} has its own rate ({source.fps:g} frames/s)")
    rate = fps or source.fps
    if rate is None:
        raise UserError(f"--video {path} is a folder of frames: give their frame rate with --fps (1 for frames "
                        "taken once a second, as AVSBench's)")
    if wav is None and isinstance(source, ImageFiles):
        raise UserError(f"--video {path} is a folder of frames, which has no sound: give it with --wav")
    samples = read_mono_16k(wav) if wav is not None else read_soundtrack(path)
    sound = SoundTrack(samples, f"--wav {wav}" if wav is not None else f"--video {path}")
    video_s = len(source) / rate if source.times is None else source.times[-1] * len(source) / (len(source) - 1)
    check_lengths(video_s, sound.seconds, "--fps and --wav" if wav is not None and fps else
                  "--wav" if wav is not None else f"--video {path}")
    return source, sound, rate


def check_lengths(video_s: float, sound_s: float, given: str) -> None:
    """The video and its sound should last about as long: more than 1 s and twice apart is a mistake
    (a wrong --fps or another video's --wav) and refused; more than 1 s apart is warned about, saying
    what happens to the part of the longer one: frames past the sound's end reuse its last example;
    sound past the last frame is not used (the model hears the last frame's 0.96 s example at most, the
    overlay stops with the video)."""
    if abs(video_s - sound_s) <= 1.0:
        return
    line = f"the video lasts {video_s:.1f} s but its sound {sound_s:.1f} s ({given})"
    if max(video_s, sound_s) > 2 * min(video_s, sound_s):
        raise UserError(f"{line}: they should be the same clip; check {given}")
    tail = "frames past the sound's end get its last 0.96 s" if video_s > sound_s else \
        "the sound past the last frame is not used"
    print(f"warning: {line}; {tail}")


@torch.no_grad()
def predict_video(model: torch.nn.Module, vggish: torch.nn.Module, source: ImageFiles | VideoFile, sound: SoundTrack,
                  blocks: list[tuple[range, list[Clip]]], device: torch.device,
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(frame index, mask [H, W] bool at the frame size, the frame's RGB) in frame order, run as
    ``blocks`` (:func:`plan_blocks`) say."""
    t = model.cfg.max_frames
    predictor = VideoPredictor(model, "chunk", t, activation="sigmoid")
    # The clips of a block reach up to 5 s ahead: only their model-size inputs are held, and each emitted
    # frame's RGB comes from a second pass over the source, in step (held full-size, 5 s of 1080p60 was 2 GB).
    held: dict[int, torch.Tensor] = {}
    frames = enumerate(iter(source))
    shown = iter(source)
    read = 0
    for b, (emit, clips) in enumerate(blocks):
        last = max(f for c in clips for f in c.frames)
        while read <= last:
            i, (x, _) = next(frames)
            held[i], read = x, i + 1
        masks: dict[int, torch.Tensor] = {}
        for clip in clips:
            x = torch.stack([held[f] for f in clip.frames])[None]
            audio = vggish(sound.examples(clip.start_s, t).to(device))[None]  # [1, T, 128]
            for f, probs in predictor.predict_clips(x, [clip.keep], lambda _f: source.frame_hw, inputs=(audio,)):
                masks[f] = probs[0] > 0.5
        for i in emit:
            yield i, masks.pop(i).numpy(), next(shown)[1]
        keep_from = min((f for c in blocks[b + 1][1] for f in c.frames), default=read) if b + 1 < len(blocks) else read
        for f in [f for f in held if f < keep_from]:
            del held[f]


def segment_video(model: torch.nn.Module, vggish: torch.nn.Module, source: ImageFiles | VideoFile, sound: SoundTrack,
                  fps: float, device: torch.device, output_dir: Path) -> dict:
    """Every frame's mask as a 0/255 PNG ``masks/<video>/<frame>.png`` at the frame size and an overlay
    video ``overlays/<video>.mp4`` with the sound the model heard (16 kHz mono), written as predictions
    arrive; returns the figures of the run."""
    name = source.name
    blocks = plan_blocks(len(source), fps, model.cfg.max_frames, source.times)
    speed = Throughput(len(source), name, print)
    with_object, area = 0, 0.0
    with VideoWriter(output_dir / "overlays" / f"{name}.mp4", fps, sound=(sound.samples, SAMPLE_RATE),
                     times=source.times) as video:
        with BackgroundWorker(depth=16, name="writer") as writer:  # one thread: the video's frames stay in order
            for i, mask, rgb in predict_video(model, vggish, source, sound, blocks, device):
                with_object += bool(mask.any())
                area += float(mask.mean())
                writer.submit(_save_mask, mask, output_dir / "masks" / name / f"{source.frame_name(i)}.png")
                writer.submit(video.write, overlay(rgb, mask))
                speed.update()
    n = len(source)
    forwards = sum(len(clips) for _, clips in blocks)
    return {"name": name, "frames": n, "fps": fps, "sound_seconds": sound.seconds, "forwards": forwards,
            "frames_with_a_source": with_object / n, "mean_mask_area": area / n, "overlay_video": str(video.path),
            "overlay_codec": video.codec, "overlay_sound": video.sound_codec, **speed.close()}


def _save_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
