"""The audio front end of MED-VT++ (numpy): wav files → VGGish log-mel examples.

Log-mel (spec a2d-avs-vss §B.3), as AudioSet's VGGish defines it: mono 16 kHz waveform in
[-1, 1] → STFT with a 400-sample periodic Hann window, hop 160, FFT 512, magnitude → 64 HTK
mel bands (mel = 1127·ln(1 + f/700)) between 125 and 7500 Hz, DC bin weight 0 → log(mel + 0.01)
→ non-overlapping examples of 96 frames (0.96 s) → [N, 96, 64]. The network that embeds them is
:class:`models.audio.VGGish`.
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from utils.cli import UserError

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400   # 25 ms
HOP_SAMPLES = 160      # 10 ms
FFT_LENGTH = 512
NUM_MEL_BINS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96    # 0.96 s of 10 ms frames; the hop between examples is the same
# The sample rates a wav may declare. Resampling from r Hz to 16 kHz makes a filter of about
# 16000 / gcd(r, 16000) taps per output sample: a 400 KB file whose header says 1 Hz would need
# 24 GiB, one saying 0 Hz cannot be resampled at all. Real recordings lie between telephone
# audio (8 kHz) and studio masters (384 kHz).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000


class AudioError(UserError, ValueError):
    """A wav file that cannot be turned into VGGish examples (names the file and the reason)."""


def _frame(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Non-padded frames of the first axis: [n, ...] → [1 + (n - length) // hop, length, ...]."""
    n = 1 + (x.shape[0] - length) // hop
    if n < 1:
        return np.zeros((0, length) + x.shape[1:], dtype=x.dtype)
    idx = np.arange(length)[None, :] + hop * np.arange(n)[:, None]
    return x[idx]


def hertz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_matrix(num_spectrogram_bins: int = FFT_LENGTH // 2 + 1, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[num_spectrogram_bins, 64] triangular HTK-mel weights; the DC bin gets no weight."""
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_MEL_BINS + 2)
    lo, centre, hi = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lo) / (centre - lo)
    falling = (hi - bins_mel[:, None]) / (hi - centre)
    w = np.maximum(0.0, np.minimum(rising, falling))
    w[0, :] = 0.0
    return w


def log_mel_spectrogram(samples: np.ndarray, block_frames: int = 4096) -> np.ndarray:
    """Mono 16 kHz samples [n] → log-mel frames [1 + (n - 400) // 160, 64] (float64).

    The spectrum is taken ``block_frames`` frames (41 s) at a time: the frames, their windowed copy and
    the complex spectrum of a whole track took 1.2 MB a second of sound (4.3 GB an hour); only the
    magnitudes [L, 257] are kept whole (205 kB a second). Each frame's FFT is its own, so blocks change
    no number; the mel projection stays one product over all frames, since a matrix product's rounding
    may depend on how many rows it is given."""
    x = np.asarray(samples)
    n = max(0, 1 + (len(x) - WINDOW_SAMPLES) // HOP_SAMPLES)
    window = 0.5 - 0.5 * np.cos(2 * np.pi / WINDOW_SAMPLES * np.arange(WINDOW_SAMPLES))  # periodic Hann
    spec = np.empty((n, FFT_LENGTH // 2 + 1))
    for a in range(0, n, block_frames):
        b = min(n, a + block_frames)
        piece = np.asarray(x[a * HOP_SAMPLES:(b - 1) * HOP_SAMPLES + WINDOW_SAMPLES], dtype=np.float64)
        spec[a:b] = np.abs(np.fft.rfft(_frame(piece, WINDOW_SAMPLES, HOP_SAMPLES) * window, FFT_LENGTH))
    return np.log(spec @ mel_matrix(spec.shape[1]) + LOG_OFFSET)


def waveform_to_examples(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Waveform [n] or [n, channels] in [-1, 1] at 16 kHz → log-mel examples [N, 96, 64] float32.

    Multi-channel audio is averaged to mono. Another sample rate raises :class:`AudioError`
    (the original resamples with resampy, which is not a dependency here; resample first, e.g.
    ``ffmpeg -ar 16000``, or use :func:`resample` whose filter differs slightly from resampy's).
    """
    if sample_rate != SAMPLE_RATE:
        raise AudioError(f"sample rate {sample_rate} Hz, VGGish needs {SAMPLE_RATE} Hz")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    return _frame(log_mel_spectrogram(x), EXAMPLE_FRAMES, EXAMPLE_FRAMES).astype(np.float32)


def resample(samples: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy) — close to, not bit-identical with, the original's resampy."""
    from math import gcd

    from scipy.signal import resample_poly
    g = gcd(int(sample_rate), int(target))
    return resample_poly(np.asarray(samples, dtype=np.float64), target // g, int(sample_rate) // g, axis=0)


TO_PCM16 = "ffmpeg -i IN.wav -c:a pcm_s16le OUT.wav"  # any sound file to what read_wav reads


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """16-bit PCM wav → (samples [n] or [n, ch] float64 in [-1, 1) as int16 / 32768, sample rate)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        with wave.open(str(path), "rb") as f:
            width, ch, sr, n = f.getsampwidth(), f.getnchannels(), f.getframerate(), f.getnframes()
            if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:  # from the header, before the samples are read
                raise AudioError(f"{path}: the header declares a sample rate of {sr} Hz, outside "
                                 f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz; the file is damaged or not a recording")
            raw = f.readframes(n)
    except (wave.Error, EOFError) as e:
        why = str(e) or ("the file is empty" if path.stat().st_size == 0 else "no RIFF/WAVE header")
        # format 3 is float samples, 65534 the "extensible" header many recorders write
        hint = f"; convert it: {TO_PCM16}" if "unknown format" in why else ""
        raise AudioError(f"{path}: not a readable PCM wav file ({why}){hint}") from e
    if width != 2:
        raise AudioError(f"{path}: {8 * width}-bit samples; 16-bit PCM is expected (AVSBench's wavs are): "
                         f"convert it: {TO_PCM16}")
    if len(raw) != n * width * ch:  # a cut-short file: fewer bytes than the header's data chunk declares
        raise AudioError(f"{path}: the header declares {n} frames ({n * width * ch} bytes) but the file holds "
                         f"{len(raw)} bytes of audio; the file is cut short, replace it with a complete copy")
    if n == 0:
        raise AudioError(f"{path}: the wav holds no samples (a header only)")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    return (x.reshape(-1, ch) if ch > 1 else x), sr


def read_soundtrack(path: str | Path, flag: str = "--video") -> np.ndarray:
    """The sound track of a video file (PyAV/FFmpeg), mixed to mono and resampled to 16 kHz by FFmpeg
    as 16-bit samples → [n] float32 in [-1, 1), the values :func:`read_wav` gives a wav's. Sample 0 is
    at the video's first frame, as in the overlay's sound (:class:`datasets.stream.SoundTrack`): sound
    before it is dropped, a track that starts later is preceded by silence. Without that, a track
    starting 0.5 s after the frames would be heard 0.5 s early by every frame."""
    import av  # only for video files

    from datasets.stream import SoundTrack  # here: it brings OpenCV, which the AVSBench loaders need not

    try:
        track = SoundTrack(path, rate=SAMPLE_RATE, sample_format="s16", strict=True)
    except LookupError:  # no track FFmpeg can decode
        raise AudioError(f"{flag} {path} has no sound track; MED-VT++ segments what makes the sound: "
                         "give the audio with --wav") from None
    except (av.FFmpegError, OSError, ValueError) as e:
        raise AudioError(f"{flag} {path}: its sound track cannot be decoded ({e})") from None
    # SoundTrack keeps only what is not yet read: short reads keep its copying linear in the length
    chunks, done, step = [], 0, 8192
    try:
        while not chunks or len(chunks[-1]) == step:  # a short read: the track's end
            chunks.append(track.read(done, done + step))
            done += len(chunks[-1])
    except (av.FFmpegError, OSError, ValueError) as e:
        raise AudioError(f"{flag} {path}: its sound track cannot be decoded ({e})") from None
    finally:
        track.close()
    # float32 holds int16 / 32768 exactly (half the memory of float64): the numbers read_wav's float64 gives
    samples = np.concatenate(chunks).astype(np.float32)
    samples /= 32768.0  # in place: no second copy of a long track
    return samples


def read_mono_16k(path: str | Path) -> np.ndarray:
    """A wav of any sample rate and channel count → mono 16 kHz samples [n] float64 (:func:`resample`)."""
    x, sr = read_wav(path)
    x = x.mean(axis=1) if x.ndim > 1 else x
    return resample(x, sr) if sr != SAMPLE_RATE else x


def wav_to_clip_examples(path: str | Path, num_frames: int = 5, allow_resample: bool = False,
                         allow_silent: bool = False) -> Tensor:
    """A clip's wav → [num_frames, 1, 96, 64] log-mel, one 0.96 s example per video frame.

    As the original preprocessing: fewer examples than frames → the last one is repeated; more
    → :class:`AudioError` (the original skips such videos). A silent (all-zero) file raises
    unless ``allow_silent`` (its log-mel would be the constant log(0.01) for every frame).
    """
    x, sr = read_wav(path)
    if sr != SAMPLE_RATE:
        if not allow_resample:
            raise AudioError(f"{path}: sample rate {sr} Hz, VGGish needs {SAMPLE_RATE} Hz "
                             "(resample the file, or pass --allow_resample)")
        x = resample(x, sr)
    if not allow_silent and not np.any(x):
        raise AudioError(f"{path}: the audio is silent (all samples zero); pass --allow_silent to keep it")
    ex = waveform_to_examples(x, SAMPLE_RATE)
    if len(ex) == 0:
        raise AudioError(f"{path}: shorter than one 0.96 s example ({len(x) / SAMPLE_RATE:.2f} s)")
    if len(ex) > num_frames:
        raise AudioError(f"{path}: {len(ex)} audio examples for {num_frames} frames (clip longer than "
                         f"{num_frames} s); trim it to the clip")
    if len(ex) < num_frames:
        ex = np.concatenate([ex, np.repeat(ex[-1:], num_frames - len(ex), axis=0)])
    return torch.from_numpy(ex).unsqueeze(1)
