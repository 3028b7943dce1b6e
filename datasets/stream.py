"""Frame sources: a video read one frame at a time, resized to the model size as it is read.

A *frame source* has ``len()`` (known before iterating), ``iter()`` yielding ``(tensor, payload)``
from frame 0 (each ``iter()`` starts over), ``tail(k)`` (the last ``min(k, N)`` frames, which the
wrap-around clips of a video's first frames need), ``frame_name(i)`` and the attributes ``name``,
``frame_hw`` (original H, W), ``size_hw`` (model input h, w) and ``fps`` (None for image files), and
``sound()``: the video's sound track for an overlay to play (:class:`SoundTrack`; None for image files);
a video file also has ``times``, each frame's presentation time in seconds from frame 0 (None if the
file has none), so that an overlay of a variable-frame-rate video keeps its timing.
``tensor`` is the ImageNet-normalised [3, h, w] frame, computed exactly as
:func:`datasets.transforms.load_frames` does; ``payload`` is the original-size HxWx3 uint8 RGB frame
when the source was built with ``keep_rgb=True`` (for overlays), else None.

No source holds more than a few frames: a long video never sits in memory whole.
:func:`open_video` turns a user's ``--video`` (a file or a folder of frames) into a source and
checks it first, so that an unreadable input fails with one line naming it before any output.
A user's frames are shown as a player shows them: a video file's rotation (a phone's display
matrix) and a frame file's EXIF orientation turn them upright, and a video's non-square pixels
(sample aspect ratio) are made square, so masks, ``frame_hw`` and overlays are those of that frame.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torch import Tensor

from datasets.transforms import to_tensor
from datasets.video import image_size, list_frame_files, open_image, require_same_size
from utils.background import background_iter
from utils.cli import UserError
from utils.logger import progress
from utils.visualize import AAC_RATES

SizeSpec = tuple[int, int] | Callable[[int, int], tuple[int, int]] | None
Item = tuple[Tensor, np.ndarray | None]


def _av():
    """PyAV, imported when a video file is read: frame folders (and machines without PyAV) need none."""
    import av

    return av


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What decoding a bad file raises: FFmpeg's errors, and PyAV's own checks (e.g. a stream with no
    decoder gives codec_context None, hence AttributeError/TypeError deeper in)."""
    return (_av().FFmpegError, OSError, ValueError, LookupError, AttributeError, TypeError, RuntimeError)


class MissingInputError(UserError, FileNotFoundError):
    """An input path that does not exist (also a FileNotFoundError, as callers used to catch)."""


def _resolve_size(size_hw: SizeSpec, h: int, w: int) -> tuple[int, int] | None:
    if size_hw is None:
        return None
    return tuple(size_hw(h, w)) if callable(size_hw) else (int(size_hw[0]), int(size_hw[1]))


def _item(img: Image.Image, size_hw: tuple[int, int] | None, keep_rgb: bool) -> Item:
    """One frame → (tensor, payload), exactly as ``load_frames``: PIL bilinear only when the size differs."""
    rgb = np.asarray(img) if keep_rgb else None
    if size_hw is not None and img.size != (size_hw[1], size_hw[0]):
        img = img.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    return to_tensor(img), rgb


def _exif_orientation(path: Path) -> int:
    """A frame file's EXIF orientation (1 = upright; 5-8 turn it a quarter), from its header only."""
    with Image.open(path) as im:
        return int(im.getexif().get(0x0112, 1) or 1)


def _reason(error: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input") without errno and path."""
    return getattr(error, "strerror", None) or f"{type(error).__name__}: {error}"


class ImageFiles:
    """Frames from image files, read one at a time (``open_image``, so errors name the file).
    ``upright``: turn each frame as its EXIF orientation says (a user's photos; dataset frames, whose
    annotations are as stored, are read as stored)."""

    fps = None
    times = None

    def __init__(self, files: Sequence[Path], size_hw: SizeSpec = None, keep_rgb: bool = False,
                 name: str = "", upright: bool = False) -> None:
        if not files:
            raise ValueError("ImageFiles: no files")
        self.files = [Path(p) for p in files]
        self.keep_rgb = keep_rgb
        self.upright = upright
        self.name = name or self.files[0].parent.name
        w, h = image_size(self.files[0])
        if upright and _exif_orientation(self.files[0]) >= 5:  # a quarter turn: width and height swap
            w, h = h, w
        self.frame_hw = (h, w)
        self._resize_to = _resolve_size(size_hw, h, w)  # None: no resize, as load_frames(files, None)
        self.size_hw = self._resize_to or self.frame_hw

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> Item:
        img = open_image(path, "RGB")
        if self.upright:  # open_image's RGB conversion keeps the EXIF tags (not a 16-bit frame's)
            img = ImageOps.exif_transpose(img)
        if img.size != self.frame_hw[::-1]:  # its prediction would silently take the first frame's size
            raise UserError(f"frame {path} is {img.size[0]}x{img.size[1]} but frame {self.files[0].name} of the same "
                            f"video is {self.frame_hw[1]}x{self.frame_hw[0]}; the frames of a video must have one "
                            "size (resize them first)")
        return _item(img, self._resize_to, self.keep_rgb)

    def __iter__(self) -> Iterator[Item]:
        return (self._read(p) for p in self.files)

    def tail(self, k: int) -> list[Item]:
        return [self._read(p) for p in self.files[max(0, len(self.files) - k):]]

    def frame_name(self, i: int) -> str:
        return self.files[i].stem

    def sound(self) -> None:
        return None  # image files have no sound track


class VideoFile:
    """A video file decoded with PyAV, lazily on each ``iter()``.

    Construction decodes the whole file once, keeping nothing but a count, the frame size and the
    last ``tail_keep`` frames: a file that cannot be read fails here, before any output is
    written, and ``len()`` is exact (container frame counts are often missing or wrong).
    """

    def __init__(self, path: str | Path, size_hw: SizeSpec = None, keep_rgb: bool = False, tail_keep: int = 8,
                 *, flag: str = "--video") -> None:
        self.path = Path(path)
        self.keep_rgb = keep_rgb
        self.flag = flag
        self.name = self.path.stem
        self._what = f"{flag} {self.path}"
        self._tail: deque = deque(maxlen=max(0, tail_keep))
        self._coded_hw: tuple[int, int] | None = None  # as stored, before the rotation
        self._turns = 0  # quarter turns counter-clockwise (np.rot90) that make a frame upright
        self._n = 0
        times: list[float | None] = []
        try:
            with _av().open(str(self.path)) as container:
                stream = self._video_stream(container)
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else None
                sar = stream.sample_aspect_ratio  # non-square pixels (DV, HDV, DVD): None or 0 when unset
                listed = stream.frames  # the container's count (0 = not recorded): checked, not trusted
                # An hour of 720p takes minutes to count: a bar, shown only when it takes more than 2 s.
                with progress(total=listed or None, desc=f"reading {self.name}", unit="frame", delay=2) as counting:
                    for frame in self._decode(container, stream):
                        if self._n == 0:  # the display matrix (a phone's portrait video): the frame's rotation
                            self._turns = round((frame.rotation or 0) / 90) % 4
                        self._n += 1
                        times.append(frame.time)
                        # VideoFrames are reference-counted FFmpeg buffers: holding a few is cheap,
                        # and only the ones tail() asks for get converted to RGB.
                        self._tail.append(frame)
                        counting.update()
                lasts = _stream_seconds(container, stream)
        except UserError:
            raise
        except _decode_errors() as e:
            raise UserError(f"{self._what}: not a video that can be decoded ({_reason(e)}); "
                            "convert it to H.264 mp4 or to a folder of frames") from None
        if self._n == 0:
            raise UserError(f"{self._what}: no frame could be decoded (unsupported codec or damaged file?)")
        # Fewer frames than the container lists: a file cut short whose index came first (a partial
        # download of a "faststart" mp4) decodes without an error up to where its data ends.
        self.listed_frames = listed if listed > self._n else None
        self.times = _frame_times(times)
        # Decoded frames that end well before the container says the video does: a file cut short
        # or damaged (an mkv or webm keeps its duration in its header, and decodes what is left).
        decoded = None if self.times is None else self.times[-1] * (self._n / (self._n - 1) if self._n > 1 else 1)
        self.listed_seconds = lasts if lasts and decoded is not None and decoded < 0.9 * lasts - 0.5 else None
        h, w = self._coded_hw
        if sar and sar != 1:  # shown as a player does: the stored width stretched by the pixel's aspect
            w = max(1, round(w * sar))
        self.frame_hw = (w, h) if self._turns % 2 else (h, w)
        self._resize_to = _resolve_size(size_hw, *self.frame_hw)
        self.size_hw = self._resize_to or self.frame_hw

    def _video_stream(self, container):
        # A single image (a PNG renamed .mp4) opens as a one-frame "video" through an image demuxer.
        fmt = container.format.name
        if fmt.startswith("image2") or fmt.endswith("_pipe"):
            raise UserError(f"{self._what} is an image ({fmt}), not a video; "
                            "give a video file or a folder of frames")
        if not container.streams.video:  # also an mp4 cut short before its index (FFmpeg finds no streams)
            raise UserError(f"{self._what} has no video stream (a sound-only file, or one cut short or damaged?)")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for this codec
            raise UserError(f"{self._what}: no decoder for its video codec; convert it to H.264 mp4 "
                            "or to a folder of frames")
        stream.thread_type = "AUTO"  # frame + slice threads: same frames, decoded faster
        return stream

    def _decode(self, container, stream) -> Iterator:
        """Decoded frames, checking that every frame has the first frame's size."""
        for i, frame in enumerate(container.decode(stream)):
            hw = (frame.height, frame.width)
            if self._coded_hw is None:
                self._coded_hw = hw
            elif hw != self._coded_hw:
                raise UserError(f"{self._what}: frames differ in size: frame 0 is {self._coded_hw[1]}x"
                                f"{self._coded_hw[0]} but frame {i} is {hw[1]}x{hw[0]}; resize them to one size first")
            yield frame

    def _item(self, frame) -> Item:
        rgb = frame.to_ndarray(format="rgb24")
        if self._turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, self._turns))
        img = Image.fromarray(rgb)
        shown = self.frame_hw[::-1]
        if img.size == shown:
            return _item(img, self._resize_to, self.keep_rgb)
        # Non-square pixels: the model input is resized once, from the stored frame; the overlay's
        # frame is the one a player shows.
        tensor, _ = _item(img, self.size_hw, False)
        return tensor, np.asarray(img.resize(shown, Image.BILINEAR)) if self.keep_rgb else None

    def _frames(self) -> Iterator:
        """A new decoding pass; errors become UserError naming the file."""
        try:
            with _av().open(str(self.path)) as container:
                yield from self._decode(container, self._video_stream(container))
        except UserError:
            raise
        except _decode_errors() as e:
            raise UserError(f"{self._what}: decoding failed on a second read ({_reason(e)})") from None

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Item]:
        n = 0
        frames = self._frames()
        try:
            for frame in frames:
                n += 1
                if n > self._n:
                    break
                yield self._item(frame)
        finally:
            frames.close()  # also when the consumer stops early: the file is closed now, not at GC
        if n != self._n:  # a file changed on disk, or a decoder that is not deterministic
            raise UserError(f"{self._what}: gave {self._n} frames on the first read but "
                            f"{'more' if n > self._n else n} on the second; is it being written to?")

    def tail(self, k: int) -> list[Item]:
        k = min(k, self._n)
        if k <= 0:
            return []
        if k <= len(self._tail):
            return [self._item(f) for f in list(self._tail)[-k:]]
        last: deque = deque(self._frames(), maxlen=k)  # a re-scan keeping k frames, not the video
        return [self._item(f) for f in last]

    def frame_name(self, i: int) -> str:
        """``00000``, ``00001``, ...: five digits (DAVIS's names), more for a video of 100,000 frames or more, so
        that the names of every frame sort in frame order as text (a file browser, ``ffmpeg -i %06d.png``)."""
        return f"{i:0{max(5, len(str(self._n - 1)))}d}"

    def sound(self) -> SoundTrack | None:
        return SoundTrack.of(self.path)


def _frame_times(times: list[float | None]) -> np.ndarray | None:
    """Presentation times from frame 0 (seconds, 8 bytes a frame), if every frame has one and they increase."""
    if any(t is None for t in times) or any(b <= a for a, b in zip(times, times[1:])):
        return None
    return np.asarray(times, np.float64) - times[0]


def _stream_seconds(container, stream) -> float | None:
    """How long the container says the video stream lasts (its own duration, else the file's): what a
    file that decodes completely reaches; None where neither is recorded."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")  # Matroska's per-track tag, e.g. "00:00:06.000000000"
    if tag.count(":") == 2:
        h, m, sec = tag.split(":")
        try:
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            pass
    return container.duration / 1e6 if container.duration else None


class SoundTrack:
    """The first sound track of a video file, for an overlay video to play along: mono float32 samples
    at the track's rate (the nearest one AAC takes, above it where there is one), decoded as they are
    read, sample 0 at the video's first frame (earlier sound dropped, a later start preceded by
    silence). Reads go forward and keep no sound before the latest start, so memory does not grow
    with the video's length; a track that stops decoding ends there.

    What MED-VT++ hears instead (:func:`datasets.audio.read_soundtrack`): ``rate`` 16000, ``sample_format``
    "s16" (FFmpeg's 16-bit samples, held exactly as float32) and ``strict``: a decoding error is raised,
    since the model's sound must not end early without a word."""

    def __init__(self, path: str | Path, rate: int | None = None, sample_format: str = "flt",
                 strict: bool = False) -> None:
        av = _av()
        self._container = av.open(str(path))
        if not self._container.streams.audio or self._container.streams.audio[0].codec_context is None:
            self._container.close()
            raise LookupError(f"{path} has no sound track FFmpeg can decode")
        audio = self._container.streams.audio[0]
        video = self._container.streams.video[0] if self._container.streams.video else None
        self.rate = rate or min((r for r in AAC_RATES if r >= audio.rate), default=max(AAC_RATES))
        self.strict = strict
        self._video_start = float(video.start_time * video.time_base) \
            if video is not None and video.start_time is not None else 0.0
        self._frames = self._container.decode(audio)
        self._resampler = av.AudioResampler(format=sample_format, layout="mono", rate=self.rate)
        self._buffer = np.zeros(0, np.float32)
        self._first = 0  # the sample number of _buffer[0]
        self._skip: int | None = None  # samples to drop before sample 0, known at the first decoded frame
        self._done = False

    @classmethod
    def of(cls, path: str | Path) -> SoundTrack | None:
        """``path``'s first sound track, or None when it has none that FFmpeg can decode."""
        try:
            return cls(path)
        except _decode_errors():  # LookupError among them: no track
            return None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start`` to ``stop`` (fewer at the end of the track); ``start`` never goes back."""
        while not self._done and self._first + len(self._buffer) < stop:
            self._decode_more()
        drop = max(0, start - self._first)
        self._buffer, self._first = self._buffer[drop:], self._first + drop
        return self._buffer[:max(0, stop - self._first)].copy()

    def _decode_more(self) -> None:
        try:
            frame = next(self._frames)
        except StopIteration:
            frame = None
        except _decode_errors():  # a damaged track: the sound ends here, the overlay goes on
            if self.strict:
                self.close()
                raise
            frame = None
        if frame is not None and self._skip is None:
            offset = round(((frame.time or 0.0) - self._video_start) * self.rate)
            self._skip = max(0, -offset)
            self._buffer = np.zeros(max(0, offset), np.float32)  # the sound starts after the first frame
        samples = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if samples:
            new = np.concatenate(samples).astype(np.float32, copy=False)
            cut = min(self._skip or 0, len(new))
            self._skip = (self._skip or 0) - cut
            self._buffer = np.concatenate([self._buffer, new[cut:]])
        if frame is None:
            self.close()

    def close(self) -> None:
        """Close the file (at the track's end, or by the writer when the video ends first)."""
        self._done = True
        if self._container is not None:
            self._container.close()
            self._container = None


def require_video(path: str | Path, flag: str = "--video") -> Path:
    """``path`` as a Path if it exists (a video file or a folder of frames), else a one-line error; scripts
    call it before reading their checkpoint, :func:`open_video` again when it opens the video."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{flag} {path} does not exist (give a video file or a folder of frames)")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):  # not "convert it to H.264"
        raise UserError(f"{flag} {path} cannot be read: permission denied for this user")
    return path


def open_video(path: str | Path, size_hw: SizeSpec, keep_rgb: bool = False, flag: str = "--video",
               min_frames: int = 2, tail_keep: int = 8, warn: Callable[[str], object] | None = print,
               ) -> ImageFiles | VideoFile:
    """A user's video (a folder of image frames or a video file) as a checked frame source; a file cut
    short is warned about through ``warn`` (:func:`cut_short_warning`; None: the caller logs it)."""
    path = require_video(path, flag)
    if path.is_dir():
        try:
            files = list_frame_files(path, flag)
        except FileNotFoundError as e:  # no image files in it
            raise MissingInputError(str(e)) from None
        # Headers only: a size mismatch is found without decoding the frames.
        require_same_size(files, f"{flag} {path}")
        # `.` has no name of its own; a user's frames are turned as a viewer shows them
        source = ImageFiles(files, size_hw, keep_rgb, name=path.resolve().name, upright=True)
    else:
        if path.stat().st_size == 0:
            raise UserError(f"{flag} {path} is an empty file (0 bytes)")
        source = VideoFile(path, size_hw, keep_rgb, tail_keep, flag=flag)
    if len(source) < min_frames:
        raise UserError(f"{flag} {path} has {len(source)} frame{'s' if len(source) != 1 else ''}; "
                        f"MED-VT segments videos of at least {min_frames} frames")
    if warn is not None and cut_short_warning(source):
        warn(f"warning: {cut_short_warning(source)}")
    return source


def cut_short_warning(source) -> str | None:
    """The warning for a video file whose container lists more frames, or a longer duration, than could
    be decoded (a partial download of a "faststart" mp4, or of an mkv, decodes without an error up to
    where its data ends)."""
    listed, seconds, n = getattr(source, "listed_frames", None), getattr(source, "listed_seconds", None), len(source)
    if listed:
        said = f"its container lists {listed} frames but only the first {n} could be decoded"
    elif seconds:
        said = (f"its container says it lasts {seconds:.1f} s but the {n} frames decoded end at "
                f"{source.times[-1]:.1f} s")
    else:
        return None
    return (f"video {source.name}: {said}: the file may be cut short or damaged (a partial download?); the "
            f"outputs cover those {n} frames")


class Prefetch:
    """A frame source whose ``iter()`` decodes in a background thread, at most ``depth`` frames ahead."""

    def __init__(self, source, depth: int = 4) -> None:
        self.source = source
        self.depth = depth

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Item]:
        return background_iter(self.source, self.depth)

    def tail(self, k: int) -> list[Item]:
        return self.source.tail(k)

    def __getattr__(self, attr: str):  # name, frame_hw, size_hw, fps, frame_name, ...
        if attr == "source":  # not yet set (e.g. during unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.source, attr)


class TensorFrames:
    """Frames already in memory ([N, 3, h, w] normalised, e.g. from the Python API); payloads are None."""

    def __init__(self, frames: Tensor) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __iter__(self) -> Iterator[tuple[Tensor, None]]:
        return ((f, None) for f in self.frames)

    def tail(self, k: int) -> list[tuple[Tensor, None]]:
        return [(f, None) for f in self.frames[len(self) - min(k, len(self)):]]
