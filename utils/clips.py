"""Which frames form a clip: the windows shared by training loaders and video prediction.

A clip is a list of frame indices fed to the model together. Three rules exist:

* :func:`wraparound_clip` — the AVOS protocol (spec avos §4.4, §6.1): the frame at position
  ``clip_len // 2``, its neighbours taken modulo the video length (a video's first frames borrow
  its last ones and the other way round).
* :func:`clamped_clip` — VSPW training: ``clip_len`` frames ``stride`` apart, shifted to stay
  inside the video (wrapping only when the video is shorter than the span).
* :func:`chunk_clips` — consecutive clips that cover a video, the last one aligned to its end.
"""
from __future__ import annotations

from collections.abc import Iterator


def wraparound_clip(center: int, num_frames: int, clip_len: int = 6) -> list[int]:
    """Frame indices of the clip centred (at position clip_len // 2) on ``center``."""
    half = clip_len // 2
    return [(center + k) % num_frames for k in range(-half, clip_len - half)]


def clamped_clip(num_frames: int, centre: int, clip_len: int, stride: int = 1) -> list[int]:
    """``clip_len`` frame indices ``stride`` apart around ``centre`` (at position clip_len // 2).

    The window is shifted to stay inside the video; a video too short for it wraps around.
    """
    span = (clip_len - 1) * stride + 1
    if span > num_frames:
        return [(centre + (k - clip_len // 2) * stride) % num_frames for k in range(clip_len)]
    start = min(max(centre - (clip_len // 2) * stride, 0), num_frames - span)
    return [start + k * stride for k in range(clip_len)]


def iter_chunk_clips(num_frames: int, clip_len: int) -> Iterator[list[int]]:
    """Clips that cover every frame: consecutive chunks, the last one shifted back inside the video.
    A video shorter than a clip gives one wrap-around clip centred on frame 0."""
    if num_frames < clip_len:
        yield wraparound_clip(0, num_frames, clip_len)
        return
    start = 0
    for start in range(0, num_frames - clip_len + 1, clip_len):
        yield list(range(start, start + clip_len))
    if start + clip_len < num_frames:
        yield list(range(num_frames - clip_len, num_frames))


def chunk_clips(num_frames: int, clip_len: int) -> list[list[int]]:
    """:func:`iter_chunk_clips` as a list."""
    return list(iter_chunk_clips(num_frames, clip_len))
