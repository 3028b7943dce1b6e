"""Overlays of predicted masks on frames, and videos/GIFs of them (written frame by frame: :class:`VideoWriter`);
a user's video's class ids as palette PNGs and an overlay video (:func:`write_label_video`)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.background import BackgroundWorker
from utils.cli import UserError
from utils.logger import Throughput
from utils.outputs import writing

# One colour per class id (1-based); the binary task uses the first.
PALETTE = np.array([[255, 64, 64], [64, 160, 255], [80, 220, 80], [255, 200, 40], [200, 80, 255], [40, 220, 220]],
                   dtype=np.uint8)


def label_image(ids: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Class ids [H, W] (0..255) → a palette PNG image: its pixel values are the ids, so one file is both
    the label map and, through ``palette`` ([N ≤ 256, 3] uint8), its coloured picture."""
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1)
    img.putpalette(colours.tolist() + [0] * (768 - colours.size))
    return img


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """frame HxWx3 uint8 RGB, mask HxW (bool or class ids) → HxWx3 uint8 with coloured mask and contours."""
    labels = np.asarray(mask)
    fg = labels.astype(bool)
    out = np.array(frame, dtype=np.uint8, copy=True)
    # Only the labelled pixels are blended (in float32), and the ids present come from a bincount,
    # not a sort: at 480p this is a few milliseconds per frame instead of a dozen.
    present = [1] if labels.dtype == bool else np.flatnonzero(np.bincount(labels[fg].ravel().astype(np.int64)))
    for k in present:
        sel = fg if labels.dtype == bool else labels == k
        color = PALETTE[(k - 1) % len(PALETTE)].astype(np.float32)
        out[sel] = ((1 - alpha) * out[sel].astype(np.float32) + alpha * color).clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)  # Hz


PTS_TIME_BASE = Fraction(1, 90000)
# A GIF's frames are held until it is written (a byte a pixel): a longer video is refused up front.
GIF_MAX_BYTES = 2 ** 30


def check_gif_size(frames: int, h: int, w: int, what: str) -> None:
    """Refuse a GIF overlay of ``what`` (``frames`` frames of ``h`` x ``w``) that would hold more than
    :data:`GIF_MAX_BYTES` until it is written: mp4 is written as the frames arrive."""
    need = frames * h * w
    if need > GIF_MAX_BYTES:
        raise UserError(f"--overlay_format gif: {what} has {frames} frames of {w}x{h}, which a GIF holds in memory "
                        f"until it is written ({need / 2 ** 30:.1f} GiB, above {GIF_MAX_BYTES / 2 ** 30:.0f} GiB); "
                        "use mp4 (the default), which is written as the frames arrive")


def gif_timing(starts: Sequence[float], end: float) -> tuple[list[int], list[int]]:
    """(the frames a GIF keeps, their delays in ms) for frames starting at ``starts`` (seconds) and
    ending at ``end``. A GIF delay is whole centiseconds and browsers show one under 2 cs as 10 cs, so
    each kept frame starts at its own time rounded to the centisecond, at least 2 cs after the one
    before; a frame due sooner is dropped (a 60 fps video keeps two frames of three). The delays add up to
    the video's length, so a 29.97 fps overlay alternates 30 and 40 ms instead of running fast."""
    keep: list[int] = []
    marks: list[int] = []
    for i, t in enumerate(starts):
        cs = round(t * 100)
        if not marks or cs >= marks[-1] + 2:
            keep.append(i)
            marks.append(cs)
    marks.append(max(round(end * 100), marks[-1] + 2))
    return keep, [10 * (b - a) for a, b in zip(marks, marks[1:])]


class _Samples:
    """Sound held in memory (mono samples, rate), read as :class:`datasets.stream.SoundTrack` is."""

    def __init__(self, samples: np.ndarray, rate: int) -> None:
        self.samples, self.rate = samples, rate

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.samples[start:stop]

    def close(self) -> None:
        pass  # nothing to release


class VideoWriter:
    """Writes RGB uint8 frames to a video as they arrive; ``.gif`` through Pillow, else PyAV.

    PyAV (mp4/mkv/mov): H.264 (``libx264``, yuv420p) when FFmpeg has it, else MPEG-4 part 2
    (``codec="auto"``); or the FFmpeg encoder named by ``codec``. GIF keeps every frame (in
    256 colours, a byte a pixel) until ``close`` (Pillow writes a GIF in one go), so it is for short clips only.

    The file is written under a temporary name in the same folder (``.<name>.partial<suffix>``)
    and renamed to ``path`` by ``close``; ``abort`` deletes it. An interrupted run therefore never
    leaves a file at ``path`` that looks complete. As a context manager: close on success, abort
    on an exception. Attributes: ``codec`` (the format written, e.g. "h264", "mpeg4", "gif"; None
    before the first frame) and ``frames_written``.

    ``sound``: (mono samples in [-1, 1], sample rate), or a track read as the frames arrive (its
    ``rate`` and ``read(start, stop)``: :class:`datasets.stream.SoundTrack`, which ``close`` closes), to
    play along (not for GIFs): AAC, muxed as the frames arrive, sample 0 at frame 0, cut where the
    last frame ends; ``sound_codec`` is "aac", or None when this FFmpeg has no AAC encoder (the video
    is then written without its sound).

    ``times``: each frame's presentation time in seconds from frame 0 (a variable-frame-rate source's
    ``times``), kept in the file (and in a GIF's delays, to the centisecond) so that the frames and the
    sound play when the source's did; without it frame i is at i / ``fps``.
    """

    def __init__(self, path: str | Path, fps: float = 10, codec: str = "auto",
                 sound: tuple[np.ndarray, int] | None = None, times: Sequence[float] | None = None) -> None:
        self.path = Path(path)
        self.fps = fps
        self.times = None if times is None else np.asarray(times, np.float64)
        self.requested_codec = codec
        self.frames_written = 0
        self.codec: str | None = None
        self.sound_codec: str | None = None
        self.is_gif = self.path.suffix.lower() == ".gif"
        if isinstance(sound, tuple):
            if np.ndim(sound[0]) != 1 or sound[1] not in AAC_RATES:
                raise ValueError(f"VideoWriter {self.path}: sound is (mono samples [n], a sample rate AAC takes: "
                                 f"{', '.join(map(str, AAC_RATES))} Hz)")
            sound = _Samples(*sound)
        if sound is not None and self.is_gif:
            raise ValueError(f"VideoWriter {self.path}: a GIF has no sound track")
        self._sound = sound
        self._audio = None  # its stream, once open
        self._samples_written = 0
        self.tmp_path = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._gif_frames: list[Image.Image] = []
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (h, w) of the first frame

    def _open(self, h: int, w: int) -> None:
        import av  # PyAV, only when a video is written (overlay images and GIFs need none)

        name = self.requested_codec
        if name == "auto":
            name = next((c for c in ("libx264", "mpeg4") if c in av.codecs_available), None)
            if name is None:
                raise RuntimeError("this FFmpeg (PyAV) has neither libx264 nor mpeg4 to write videos")
        self._container = av.open(str(self.tmp_path), "w")
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream(name, rate=rate)
        # yuv420p stores colour at half resolution, so both sides must be even: an odd frame gets
        # one extra row/column copying its edge (see write), invisible at the border.
        stream.width, stream.height = w + w % 2, h + h % 2
        stream.pix_fmt = "yuv420p"
        if self.times is not None:  # each frame's own time, in MPEG's 90 kHz clock
            stream.codec_context.time_base = PTS_TIME_BASE
        if name == "mpeg4":  # its default 200 kbit/s smears the masks; about 0.2 bit per pixel
            stream.bit_rate = max(1_000_000, int(0.2 * stream.width * stream.height * float(rate)))
        self._stream = stream
        self.codec = stream.codec_context.codec.canonical_name
        if self._sound is not None:
            if "aac" in av.codecs_available:  # else the video goes without its sound (sound_codec stays None)
                self._audio = self._container.add_stream("aac", rate=int(self._sound.rate), layout="mono")
                self.sound_codec = self._audio.codec_context.codec.canonical_name

    def write(self, rgb: np.ndarray) -> None:
        """Append one HxWx3 uint8 RGB frame (the same size as the first)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"VideoWriter: expected an HxWx3 uint8 RGB frame, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        if self._size is None:
            self._size = (h, w)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.is_gif:
                self.codec = "gif"
            else:
                self._open(h, w)
        elif (h, w) != self._size:
            raise ValueError(f"VideoWriter {self.path}: frame {self.frames_written} is {w}x{h}, "
                             f"the first was {self._size[1]}x{self._size[0]}")
        if self.is_gif:
            # Quantised now, as Pillow's GIF writer would at the end (the same bytes): one byte a pixel
            # held until close instead of three, and the quantising spread over the run.
            self._gif_frames.append(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
        else:
            if h % 2 or w % 2:
                rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            import av  # imported by _open already: a lookup

            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if self.times is not None:
                frame.pts, frame.time_base = round(self.start(self.frames_written) / PTS_TIME_BASE), PTS_TIME_BASE
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        self.frames_written += 1
        if self._audio is not None:
            self._write_sound(last=False)

    def _write_sound(self, last: bool) -> None:
        """Mux the sound up to where the frames written so far end, in the encoder's frame size (the
        last, shorter piece only when closing): audio and video stay interleaved in the file."""
        import av

        rate = self._sound.rate
        end = round(self.start(self.frames_written) * rate)
        size = self._audio.codec_context.frame_size or 1024  # 0 until the first encode opens it: AAC's 1024
        while self._samples_written < end and (last or end - self._samples_written >= size):
            a = self._samples_written
            piece = np.clip(self._sound.read(a, min(a + size, end)), -1, 1).astype(np.float32)[None]
            if not piece.size:  # the sound ended before the video
                break
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = int(rate), a
            for packet in self._audio.encode(frame):
                self._container.mux(packet)
            self._samples_written += piece.shape[1]
        if last:
            for packet in self._audio.encode(None):
                self._container.mux(packet)

    def close(self) -> Path:
        """Finish the file and move it to ``path``; returns ``path``."""
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"no frames to write to {self.path}")
        try:
            if self.is_gif:
                keep, durations = gif_timing([self.start(i) for i in range(self.frames_written)],
                                             self.start(self.frames_written))
                images = [self._gif_frames[i] for i in keep]
                images[0].save(self.tmp_path, format="GIF", save_all=True, append_images=images[1:],
                               duration=durations, loop=0)
                self._gif_frames = []
            elif self._container is not None:
                for packet in self._stream.encode(None):  # flush the encoder's delayed frames
                    self._container.mux(packet)
                if self._audio is not None:
                    self._write_sound(last=True)
                self._container.close()
                self._container = None
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._close_sound()
        return self.path

    def start(self, i: int) -> float:
        """When frame ``i`` starts, in seconds from frame 0; ``i`` = the number of frames: when the
        last one ends (a variable-rate video's last frame lasts its mean frame time)."""
        if self.times is None:
            return i / self.fps
        if i < len(self.times):
            return float(self.times[i])
        last, n = float(self.times[-1]), len(self.times)
        return last + (i - n + 1) * (last / (n - 1) if n > 1 else 1 / self.fps)

    def abort(self) -> None:
        """Stop writing and delete the unfinished file."""
        self._gif_frames = []
        self._close_sound()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # already failing; the file goes anyway
                pass
            self._container = None
        self.tmp_path.unlink(missing_ok=True)

    def _close_sound(self) -> None:
        if self._sound is not None:
            self._sound.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Write RGB uint8 frames as .mp4 (H.264 through PyAV) or .gif (Pillow), by the path's suffix."""
    if not frames:
        raise ValueError("no frames to write")
    with VideoWriter(path, fps) as writer:
        for f in frames:
            writer.write(f)
    return writer.path


def save_label_png(ids: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """Class ids [H, W] → ``path``, a palette PNG (:func:`label_image`), its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        label_image(ids, palette).save(path)


def write_label_video(predictions: Iterable[tuple[int, np.ndarray, np.ndarray]], source, output_dir: Path,
                      palette: np.ndarray, num_classes: int, colour: Callable[[np.ndarray, np.ndarray], np.ndarray],
                      fps: float = 10) -> dict:
    """A multi-class model's predictions of a user's video, written as they arrive, so memory does not
    grow with the video's length: each frame's class ids as a palette PNG
    ``predictions/<video>/<frame>.png`` and ``colour(rgb, ids)`` as one overlay video
    ``overlays/<video>.mp4`` (at the source's frame times; ``fps`` for frame folders), which plays the
    video file's sound (``source.sound()``; re-encoded as AAC, mono).

    ``predictions``: (frame index, class ids [H, W] uint8, the frame's RGB [H, W, 3]) in frame order;
    ``source``: the frame source they come from (its ``name``, ``frame_name``, ``fps`` and length).
    Returns the overlay video's path and codec, its sound's codec (None: no sound), the share of pixels
    of each class predicted, and the speed (:class:`utils.logger.Throughput`).
    """
    name = source.name
    counts = np.zeros(num_classes, np.int64)
    speed = Throughput(len(source), name, print)
    with VideoWriter(output_dir / "overlays" / f"{name}.mp4", source.fps or fps, sound=source.sound(),
                     times=source.times) as video:
        with BackgroundWorker(depth=16, name="writer") as writer:  # one thread: the video's frames stay in order
            for i, ids, rgb in predictions:
                counts += np.bincount(ids.ravel(), minlength=num_classes)[:num_classes]
                png = output_dir / "predictions" / name / f"{source.frame_name(i)}.png"
                writer.submit(save_label_png, ids, palette, png)
                writer.submit(video.write, colour(rgb, ids))
                speed.update()
    shares = counts / max(1, counts.sum())
    return {"name": name, "overlay_video": str(video.path), "overlay_codec": video.codec,
            "overlay_sound": video.sound_codec,
            "class_shares": {int(c): float(shares[c]) for c in np.flatnonzero(shares)}, **speed.close()}
