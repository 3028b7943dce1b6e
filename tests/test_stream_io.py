"""Streaming video I/O: frame sources (datasets/stream.py), background threads (utils/background.py)
and the frame-by-frame VideoWriter (utils/visualize.py). CPU only, synthetic data, a few seconds."""
import gc
import threading
import time
import weakref
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.stream import ImageFiles, Prefetch, VideoFile, cut_short_warning, open_video
from datasets.transforms import load_frames, to_tensor
from utils.background import BackgroundWorker, background_iter
from utils.cli import UserError
from utils.visualize import VideoWriter, overlay, write_video

H, W, N = 48, 64, 20


def square_frames(n=N, h=H, w=W):
    """A white square moving right over a gradient: easy for a codec, distinct per frame."""
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = np.linspace(0, 200, w, dtype=np.uint8)[None, :]
    base[..., 2] = np.linspace(0, 200, h, dtype=np.uint8)[:, None]
    frames = []
    for i in range(n):
        f = base.copy()
        f[12:28, 2 * i:2 * i + 16] = 255
        frames.append(f)
    return frames


def encode(path, frames, codec="libx264", fmt=None, rate=10, sar=None):
    """Write ``frames`` with plain PyAV (independent of the VideoWriter under test); ``sar``: the pixels'
    aspect ratio (a Fraction), as DV or HDV record it."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height = w, h
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    return path


def read_back(path):
    with av.open(str(path)) as c:
        codec = c.streams.video[0].codec_context.name
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return codec, frames


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return encode(tmp_path_factory.mktemp("video") / "clip.mp4", square_frames())


@pytest.fixture
def png_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):  # natural order: frame2 before frame10
        Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)).save(folder / f"frame{i * 4}.png")
    return folder


def tensors(items):
    return [t for t, _ in items]


def assert_same(a, b):
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------------- ImageFiles
@pytest.mark.parametrize("size", [None, (24, 32), (37, 50)])
def test_image_files_equal_load_frames(png_dir, size):
    files = sorted(png_dir.glob("*.png"), key=lambda p: int(p.stem[5:]))
    src = ImageFiles(files, size, keep_rgb=True)
    expected = load_frames(files, size)
    assert len(src) == 6 and src.frame_hw == (37, 50) and src.size_hw == (size or (37, 50))
    items = list(src)
    assert_same(tensors(items), list(expected))
    assert_same(tensors(src.tail(2)), list(expected[-2:]))
    assert_same(tensors(src.tail(99)), list(expected))
    for (_, rgb), p in zip(items, files):
        assert np.array_equal(rgb, np.asarray(Image.open(p).convert("RGB")))
    assert src.frame_name(1) == "frame4" and src.fps is None


def test_open_video_folder_callable_size_and_no_payload(png_dir):
    seen = []
    src = open_video(png_dir, lambda h, w: seen.append((h, w)) or (h // 2, w // 2))
    assert seen == [(37, 50)] and src.size_hw == (18, 25) and src.name == "frames"
    assert [src.frame_name(i) for i in range(3)] == ["frame0", "frame4", "frame8"]  # natural order
    files = [png_dir / f"frame{i * 4}.png" for i in range(6)]
    assert_same(tensors(src), list(load_frames(files, (18, 25))))
    assert all(rgb is None for _, rgb in src)


def test_folder_of_different_sizes_names_two_files(png_dir):
    Image.new("RGB", (40, 30)).save(png_dir / "frame8.png")
    with pytest.raises(UserError, match=r"frame0\.png is 50x37 but frame8\.png is 40x30"):
        open_video(png_dir, None)


# ------------------------------------------------------------------------------------ VideoFile
def test_video_file_frames(mp4):
    src = open_video(mp4, (24, 32), keep_rgb=True)
    assert isinstance(src, VideoFile)
    assert (len(src), src.frame_hw, src.size_hw, src.fps, src.name) == (N, (H, W), (24, 32), 10.0, "clip")
    assert src.frame_name(7) == "00007"
    items = list(src)
    assert len(items) == N
    for (t, rgb), original in zip(items, square_frames()):
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        assert np.abs(rgb.astype(int) - original).mean() < 4  # lossy H.264
        assert torch.equal(t, to_tensor(Image.fromarray(rgb).resize((32, 24), Image.BILINEAR)))
    assert_same(tensors(src), tensors(items))  # a second pass decodes the same frames
    assert_same(tensors(src.tail(3)), tensors(items[-3:]))
    assert_same(tensors(src.tail(12)), tensors(items[-12:]))  # more than tail_keep=8: a re-scan
    assert_same(tensors(src.tail(N + 5)), tensors(items))
    assert np.array_equal(src.tail(1)[0][1], items[-1][1])


def test_frame_names_of_a_long_video_sort_in_frame_order(mp4, monkeypatch):
    """Frames were named %05d whatever the length: a video of 100,000 frames or more (55 min at 30 fps) had
    100000.png sort before 99999.png. Names get the digits the last frame needs, five at least (DAVIS's)."""
    src = open_video(mp4, (24, 32))
    monkeypatch.setattr(src, "_n", 100_001)  # the count the first read made, without decoding 55 minutes
    names = [src.frame_name(i) for i in (0, 9, 99_999, 100_000)]
    assert names == ["000000", "000009", "099999", "100000"] and names == sorted(names)
    monkeypatch.setattr(src, "_n", 100_000)
    assert src.frame_name(99_999) == "99999"  # up to 100,000 frames: the names as before


def test_video_file_keeps_no_frames(mp4):
    src = VideoFile(mp4, None, keep_rgb=True, tail_keep=4)
    refs = []
    for i, (t, rgb) in enumerate(src):
        refs.append(weakref.ref(rgb))
        del t, rgb
        # frames two steps back are already freed (by reference counting): nothing holds them
        assert all(r() is None for r in refs[:-2]), f"frame {i}: earlier frames still alive"
    # and the source holds no per-frame list: at most tail_keep frames (and an array of frame times)
    sizes = [len(v) for v in vars(src).values() if isinstance(v, (list, tuple, dict, set)) or hasattr(v, "maxlen")]
    assert max(sizes, default=0) <= 4
    assert src.times.dtype == np.float64 and src.times.shape == (len(src),)


def test_video_file_cut_short_after_its_index_says_so(tmp_path):
    """A "faststart" mp4 (index first, as served on the web) cut short decodes without an error up to
    where its data ends; the count its index lists is kept so that inference can warn."""
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        noise = np.random.default_rng(0)  # frames of similar sizes: the cut falls mid-video
        for _ in range(40):
            f = noise.integers(0, 255, (H, W, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    whole = VideoFile(path)
    assert len(whole) == 40 and whole.listed_frames is None
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:int(path.stat().st_size * 0.6)])
    short = VideoFile(cut)
    assert 2 <= len(short) < 40 and short.listed_frames == 40
    assert cut_short_warning(whole) is None
    assert f"lists 40 frames but only the first {len(short)} could be decoded" in cut_short_warning(short)
    warned = []
    open_video(cut, None, warn=warned.append)  # every --video but AVOS's (which logs it to out.log) prints it
    assert warned == [f"warning: {cut_short_warning(short)}"]


def test_video_changed_after_validation(mp4, tmp_path):
    path = encode(tmp_path / "v.mp4", square_frames(6))
    src = open_video(path, None)
    encode(path, square_frames(4))
    with pytest.raises(UserError, match="6 frames on the first read but 4"):
        list(src)


def test_prefetch_delegates_and_matches(mp4):
    src = VideoFile(mp4, (24, 32))
    pre = Prefetch(src, depth=2)
    assert (len(pre), pre.name, pre.frame_hw, pre.size_hw, pre.fps, pre.frame_name(3)) == \
        (N, "clip", (H, W), (24, 32), 10.0, "00003")
    assert_same(tensors(pre), tensors(src))
    assert_same(tensors(pre.tail(2)), tensors(src.tail(2)))


# --------------------------------------------------------------------------------------- errors
def _bad_inputs(tmp_path, mp4):
    missing = tmp_path / "none.mp4"
    empty = tmp_path / "empty.mp4"
    empty.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 20)
    png = tmp_path / "image.mp4"
    Image.new("RGB", (32, 24), (200, 10, 10)).save(png, format="PNG")
    one = encode(tmp_path / "one.mp4", square_frames(1))
    # An MJPEG AVI whose fourcc is overwritten: FFmpeg knows no decoder for "ZZZZ".
    avi = encode(tmp_path / "ok.avi", square_frames(5), codec="mjpeg", fmt="avi")
    data = avi.read_bytes()
    assert b"MJPG" in data
    codec = tmp_path / "codec.avi"
    codec.write_bytes(data.replace(b"MJPG", b"ZZZZ"))
    return {"missing": (missing, "does not exist"), "empty": (empty, "empty file"), "text": (text, "not a video"),
            "png": (png, "is an image"), "one frame": (one, "has 1 frame; MED-VT segments videos of at least 2"),
            "codec": (codec, "decoder")}


def test_unreadable_inputs_are_one_line_user_errors(tmp_path, mp4):
    cases = _bad_inputs(tmp_path, mp4)
    # the codec case really cannot be decoded by PyAV itself
    with av.open(str(cases["codec"][0])) as c, pytest.raises(av.FFmpegError):
        list(c.decode(video=0))
    for what, (path, words) in cases.items():
        with pytest.raises(UserError) as info:
            open_video(path, (24, 32), flag="--video")
        message = str(info.value)
        assert str(path) in message and "--video" in message and words in message, (what, message)
        assert "\n" not in message, what
    with pytest.raises(FileNotFoundError):  # a missing path is also what callers caught before
        open_video(cases["missing"][0], None)
    assert len(open_video(cases["one frame"][0], None, min_frames=1)) == 1


def test_a_video_cut_before_its_index_or_unreadable_is_named_for_what_it_is(tmp_path, mp4, monkeypatch):
    """An mp4 cut short before its index (moov at the end: FFmpeg finds no streams) said only "has no video
    stream"; a file this user may not read was "not a video that can be decoded; convert it to H.264"."""
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[: mp4.stat().st_size * 2 // 3])
    with pytest.raises(UserError, match=r"cut\.mp4 has no video stream \(a sound-only file, or one cut short"):
        open_video(cut, None)
    monkeypatch.setattr("datasets.stream.os.access", lambda path, mode: False)  # as a user without read permission
    with pytest.raises(UserError, match=r"--video .*clip\.mp4 cannot be read: permission denied"):
        open_video(mp4, None)


def test_counting_a_video_files_frames_shows_a_bar_when_it_takes_long(mp4, monkeypatch):
    """Opening a video file decodes it once to count its frames (minutes for an hour of 720p), under a
    progress bar shown after 2 s; it counts every frame against the container's count."""
    seen = {}

    class Bar:
        def __init__(self, **kwargs):
            seen.update(kwargs, n=0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            seen["closed"] = True

        def update(self, k=1):
            seen["n"] += k

    monkeypatch.setattr("datasets.stream.progress", Bar)
    source = open_video(mp4, None)
    assert seen["n"] == len(source) == seen["total"] and seen["delay"] == 2 and seen["closed"]


def test_empty_folder(tmp_path):
    with pytest.raises(UserError, match="--clip .* has no"):
        open_video(tmp_path, None, flag="--clip")


# ------------------------------------------------------------------------------------ background
def wait_for_threads(count, timeout=1.0):
    deadline = time.monotonic() + timeout
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


def test_background_iter_order_and_errors():
    assert list(background_iter(range(100), depth=3)) == list(range(100))

    def failing():
        yield from range(3)
        raise UserError("frame 3 is broken")

    got = []
    with pytest.raises(UserError, match="frame 3 is broken"):
        for x in background_iter(failing(), depth=2):
            got.append(x)
    assert got == [0, 1, 2]


def test_background_iter_stops_when_the_consumer_stops():
    before = threading.active_count()
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    gen = background_iter(endless(), depth=2)
    assert [next(gen) for _ in range(5)] == list(range(5))
    assert threading.active_count() == before + 1
    gen.close()
    assert wait_for_threads(before) == before and closed.is_set()

    gen = background_iter(endless(), depth=2)  # dropped without close: garbage collection stops it
    next(gen)
    del gen
    gc.collect()
    assert wait_for_threads(before) == before


def test_background_worker_order_bound_and_errors():
    done = []
    with BackgroundWorker(depth=3) as worker:
        for i in range(30):
            worker.submit(lambda i: (time.sleep(0.002), done.append(i)), i)
    assert done == list(range(30)) and 1 <= worker.max_pending <= 3

    worker = BackgroundWorker(depth=4)
    worker.submit(done.append, "a")
    worker.submit(lambda: 1 / 0)
    worker.submit(done.append, "skipped")  # after a failure nothing more runs
    time.sleep(0.1)
    with pytest.raises(ZeroDivisionError):  # the next submit reports it
        worker.submit(done.append, "b")
    with pytest.raises(ZeroDivisionError):  # and so does close
        worker.close()
    assert done[-1] == "a"


def test_background_worker_context_manager_on_exception():
    before = threading.active_count()
    ran = []
    with pytest.raises(KeyError, match="original"):
        with BackgroundWorker(depth=100) as worker:
            started = threading.Event()
            worker.submit(lambda: (started.set(), time.sleep(0.2), ran.append(0)))
            started.wait()
            for i in range(1, 10):
                worker.submit(ran.append, i)
            worker.submit(lambda: 1 / 0)
            raise KeyError("original")  # neither masked by the failing job nor waiting for the rest
    assert ran == [0]  # the running job finished, the queued ones never ran
    assert wait_for_threads(before) == before


# ---------------------------------------------------------------------------------- VideoWriter
@pytest.mark.parametrize("h,w", [(48, 64), (47, 63)])
def test_video_writer_mp4(tmp_path, h, w):
    frames = [f[:h, :w] for f in square_frames(12)]
    path = tmp_path / "out" / "overlay.mp4"
    with VideoWriter(path, fps=10) as writer:
        for f in frames:
            writer.write(f)
            assert not path.exists()  # never a complete-looking file while writing
    assert writer.tmp_path.name == ".overlay.partial.mp4"
    assert writer.codec == "h264" and writer.frames_written == 12 and not writer.tmp_path.exists()
    codec, back = read_back(path)
    assert codec == "h264" and len(back) == 12
    assert back[0].shape == (h + h % 2, w + w % 2, 3)  # odd sides padded by one edge pixel
    assert all(np.abs(b[:h, :w].astype(int) - f).mean() < 4 for b, f in zip(back, frames))


def test_video_writer_mpeg4_abort_and_errors(tmp_path):
    path = tmp_path / "a.mp4"
    writer = VideoWriter(path, fps=25, codec="mpeg4")
    for f in square_frames(5):
        writer.write(f)
    assert writer.codec == "mpeg4" and writer.close() == path
    assert read_back(path)[0] == "mpeg4" and len(read_back(path)[1]) == 5

    writer = VideoWriter(tmp_path / "partial.mp4", codec="mpeg4")
    for f in square_frames(3):
        writer.write(f)
    assert writer.tmp_path.exists() and not writer.path.exists()
    writer.abort()
    assert not writer.tmp_path.exists() and not writer.path.exists()

    path = tmp_path / "b.mp4"
    with pytest.raises(RuntimeError, match="interrupted"):
        with VideoWriter(path) as writer:
            writer.write(square_frames(1)[0])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [tmp_path / "a.mp4"]  # neither b.mp4 nor its partial file

    writer = VideoWriter(tmp_path / "c.mp4")
    writer.write(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="the first was 16x16"):
        writer.write(np.zeros((16, 18, 3), np.uint8))
    writer.abort()
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "d.mp4").close()
    assert list(tmp_path.iterdir()) == [tmp_path / "a.mp4"]


def _tone(seconds: float, hz: float, rate: int = 16000) -> np.ndarray:
    return 0.4 * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)


def _dominant_hz(x: np.ndarray, rate: int = 16000) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * rate / len(x))


def read_sound(path):
    """(codec, sample rate, seconds the stream lasts, mono samples) of the file's first sound track."""
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        return a.codec_context.name, a.sample_rate, float(a.duration * a.time_base), samples


def test_video_writer_plays_the_sound_along_and_cuts_it_where_the_frames_end(tmp_path, monkeypatch):
    """12 frames at 10 frames/s with 0.6 s of 440 Hz, then 1000 Hz for 1.6 s: the file's AAC track lasts
    the video's 1.2 s (the rest cut), in order (each half's pitch where it was); a shorter sound ends
    early; without an AAC encoder the video is written alone; a GIF or a stereo array with sound is
    refused."""
    path = tmp_path / "voiced.mp4"
    sound = np.concatenate([_tone(0.6, 440), _tone(1.6, 1000)])
    with VideoWriter(path, fps=10, sound=(sound, 16000)) as writer:
        for f in square_frames(12):
            writer.write(f)
    assert writer.codec == "h264" and writer.sound_codec == "aac"
    assert len(read_back(path)[1]) == 12
    codec, rate, seconds, back = read_sound(path)
    assert codec == "aac" and rate == 16000 and seconds == pytest.approx(1.2, abs=0.07)  # one AAC frame
    assert _dominant_hz(back[1600:8000]) == pytest.approx(440, abs=10)   # 0.1-0.5 s
    assert _dominant_hz(back[11200:17600]) == pytest.approx(1000, abs=10)  # 0.7-1.1 s

    short = tmp_path / "short.mp4"
    with VideoWriter(short, fps=10, sound=(_tone(0.5, 440), 16000)) as writer:
        for f in square_frames(12):
            writer.write(f)
    assert read_sound(short)[2] == pytest.approx(0.5, abs=0.07) and len(read_back(short)[1]) == 12

    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"aac"})
    mute = tmp_path / "mute.mp4"
    with VideoWriter(mute, fps=10, sound=(sound, 16000)) as writer:
        for f in square_frames(3):
            writer.write(f)
    assert writer.sound_codec is None and len(read_back(mute)[1]) == 3
    with av.open(str(mute)) as c:
        assert not c.streams.audio

    for name, bad, why in [("a.gif", (sound, 16000), "a GIF has no sound track"),
                           ("b.mp4", (np.stack([sound, sound]), 16000), "mono samples"),
                           ("c.mp4", (sound, 7000), "a sample rate AAC takes")]:
        with pytest.raises(ValueError, match=why):
            VideoWriter(tmp_path / name, sound=bad)


def encode_voiced(path, frames, sound, rate=22050, fps=10, codec="aac"):
    """``frames`` (H.264) and the mono ``sound`` as a stereo track (AAC, or 16-bit PCM: ``pcm_s16le``,
    any rate, for a .mkv), written with plain PyAV."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = c.add_stream(codec, rate=rate, layout="stereo")
        for f in frames:
            c.mux(video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(video.encode(None))
        for a in range(0, len(sound), 1024):
            stereo = np.stack([sound[a:a + 1024]] * 2)
            piece = av.AudioFrame.from_ndarray(stereo.astype(np.float32), format="fltp", layout="stereo") \
                if codec == "aac" else \
                av.AudioFrame.from_ndarray((stereo.T.reshape(1, -1) * 32767).astype(np.int16), format="s16",
                                           layout="stereo")
            piece.sample_rate, piece.pts = rate, a
            c.mux(audio.encode(piece))
        c.mux(audio.encode(None))
    return path


def test_a_video_files_sound_is_read_as_needed_and_plays_in_its_overlay(tmp_path, mp4, png_dir):
    """A file with 0.6 s of 440 Hz then 0.8 s of 1000 Hz (stereo AAC, 22.05 kHz) under 12 frames: its
    SoundTrack reads it forward, mono, each pitch where it was, ending with the track; an overlay of 8
    frames written with it plays the first 0.8 s (re-encoded AAC, the file's rate) and closes the file.
    A file without sound and a folder of frames have none."""
    rate = 22050
    src = encode_voiced(tmp_path / "voiced.mp4", square_frames(12),
                        np.concatenate([_tone(0.6, 440, rate), _tone(0.8, 1000, rate)]))
    track = VideoFile(src).sound()
    assert track.rate == rate
    head = track.read(0, rate // 2)
    assert len(head) == rate // 2 and _dominant_hz(head[rate // 10:], rate) == pytest.approx(440, abs=10)
    later = track.read(round(0.7 * rate), rate)  # forward: what came before is let go
    assert len(later) == rate - round(0.7 * rate) and _dominant_hz(later, rate) == pytest.approx(1000, abs=10)
    rest = track.read(rate, 10 * rate)
    assert len(rest) == pytest.approx(0.4 * rate, abs=1100)  # the track ends at 1.4 s (one AAC frame)
    assert track.read(10 * rate, 11 * rate).size == 0 and track._container is None  # closed at its end

    out = tmp_path / "overlay.mp4"
    with VideoWriter(out, fps=10, sound=VideoFile(src).sound()) as writer:
        for f in square_frames(8):
            writer.write(f)
    codec, back_rate, seconds, back = read_sound(out)
    assert writer.sound_codec == "aac" and codec == "aac" and back_rate == rate
    assert seconds == pytest.approx(0.8, abs=0.06) and writer._sound._container is None
    assert _dominant_hz(back[rate // 10:rate // 2], rate) == pytest.approx(440, abs=10)
    assert _dominant_hz(back[round(0.63 * rate):round(0.78 * rate)], rate) == pytest.approx(1000, abs=30)

    assert VideoFile(mp4).sound() is None and open_video(png_dir, None).sound() is None

    # a rate AAC does not take (7 kHz PCM): the track is read at the next one up, 7350 Hz
    odd = encode_voiced(tmp_path / "odd.mkv", square_frames(10), _tone(1.0, 440, 7000), rate=7000,
                        codec="pcm_s16le")
    with VideoWriter(tmp_path / "odd.mp4", fps=10, sound=VideoFile(odd).sound()) as writer:
        for f in square_frames(10):
            writer.write(f)
    codec, back_rate, seconds, back = read_sound(tmp_path / "odd.mp4")
    assert (codec, back_rate) == ("aac", 7350) and seconds == pytest.approx(1.0, abs=0.15)
    assert _dominant_hz(back[735:], 7350) == pytest.approx(440, abs=10)


def test_video_writer_gif_and_write_video(tmp_path):
    frames = [overlay(f, np.pad(np.ones((10, 10), bool), ((5, 33), (5, 49)))) for f in square_frames(6)]
    with VideoWriter(tmp_path / "x.gif", fps=5) as writer:
        for f in frames:
            writer.write(f)
    assert writer.codec == "gif"
    with Image.open(tmp_path / "x.gif") as im:
        assert im.n_frames == 6 and im.size == (W, H)
    # Frames are held quantised (a byte a pixel, not three) and the file is the one Pillow writes from RGB.
    Image.fromarray(frames[0]).save(tmp_path / "rgb.gif", save_all=True, duration=[200] * 6, loop=0,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    assert (tmp_path / "x.gif").read_bytes() == (tmp_path / "rgb.gif").read_bytes()
    held = VideoWriter(tmp_path / "held.gif", fps=5)
    held.write(frames[0])
    assert held._gif_frames[0].mode == "P"
    held.abort()
    assert write_video(frames, tmp_path / "v" / "y.mp4", 10) == tmp_path / "v" / "y.mp4"
    assert len(read_back(tmp_path / "v" / "y.mp4")[1]) == 6
    assert write_video(frames, str(tmp_path / "y.gif")) == Path(tmp_path / "y.gif")
    with pytest.raises(ValueError):
        write_video([], tmp_path / "z.mp4")


def test_inference_script_refuses_bad_videos_before_writing_anything(tmp_path, mp4):
    """Through inference_swin_medvt_avos.py: each bad --video is one line naming it, and no output
    folder is created (nothing partial can be mistaken for a result)."""
    import torch

    import inference_swin_medvt_avos as script
    from models import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, ckpt)
    for what, (path, words) in _bad_inputs(tmp_path, mp4).items():
        out = tmp_path / f"out_{what.replace(' ', '_')}"
        with pytest.raises(UserError) as info:
            script.main(["--model_path", str(ckpt), "--video", str(path), "--val_size", "32", "--device", "cpu",
                         "--output_dir", str(out)])
        assert str(path) in str(info.value) and words in str(info.value), (what, str(info.value))
        assert not out.exists(), what


# ------------------------------------------------------------------ upright frames, frame times, cut mkv
def _portrait(h=64, w=48):
    """An upright portrait frame: white top quarter, dark elsewhere, a grey left strip (top and left tell)."""
    f = np.full((h, w, 3), 30, np.uint8)
    f[: h // 4] = 255
    f[:, : w // 6] = 128
    return f


def _rotate_display(path):
    """Set the mp4's track matrix to a phone's portrait one (a = 0, b = 1, c = -1, d = 0: players turn
    the stored frame a quarter clockwise), as an iPhone writes it."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") - 4  # the box starts with its size
    # after the size and name: version/flags, 5 words (times, id, reserved, duration), 8 reserved, 4 shorts
    matrix = at + 8 + 4 + 4 * 5 + 8 + 2 * 4
    data[matrix:matrix + 36] = np.array([0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30], ">i4").tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_rotated_phone_video_and_exif_rotated_frames_are_read_upright(tmp_path):
    """A portrait video stored sideways (its frames turned a quarter counter-clockwise, the display matrix
    saying turn them back) and a folder of JPEGs with EXIF orientation 6 (the same): both give the upright
    portrait frame, its size as frame_hw, so masks and overlays are those of the frame a player shows."""
    up = _portrait()
    stored = np.ascontiguousarray(np.rot90(up, 1))  # what the sensor wrote: 64 wide, 48 high
    video = _rotate_display(encode(tmp_path / "phone.mp4", [stored] * 4))
    with av.open(str(video)) as c:
        assert next(c.decode(video=0)).rotation == -90  # PyAV reads the matrix back: a quarter clockwise
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    for i in range(3):
        Image.fromarray(stored).save(folder / f"{i}.jpg", quality=95, exif=exif.tobytes())
    for source in (open_video(video, None, keep_rgb=True), open_video(folder, None, keep_rgb=True)):
        assert source.frame_hw == (64, 48), source
        _, rgb = next(iter(source))
        assert rgb.shape == (64, 48, 3)
        assert rgb[:16].mean() > 200 and rgb[20:, 10:].mean() < 60 and 100 < rgb[20:, :6].mean() < 160
        assert source.size_hw == (64, 48) and next(iter(source))[0].shape == (3, 64, 48)
    flat = ImageFiles(sorted(folder.iterdir()))  # a dataset's frames are read as stored
    assert flat.frame_hw == (48, 64)


def test_a_video_with_non_square_pixels_is_read_as_a_player_shows_it(tmp_path):
    """HDV-style pixels 4/3 wide: a 96x48 stored frame is shown 128x48, so frame_hw, the overlay's frame and
    the masks are 128 wide; the model input is the stored frame resized once to the model size (not the
    shown frame resized again). With the display matrix too, the stretch follows the stored width."""
    stored = _portrait(48, 96)  # white top quarter, grey left sixth (16 stored columns)
    wide = encode(tmp_path / "hdv.mp4", [stored] * 3, sar=Fraction(4, 3))
    source = open_video(wide, lambda h, w: (h // 2, w // 2), keep_rgb=True)
    assert source.frame_hw == (48, 128) and source.size_hw == (24, 64)
    tensor, rgb = next(iter(source))
    assert rgb.shape == (48, 128, 3) and 100 < rgb[20:, :19].mean() < 160 and rgb[20:, 24:].mean() < 60
    decoded = read_back(wide)[1][0]
    assert torch.equal(tensor, to_tensor(Image.fromarray(decoded).resize((64, 24), Image.BILINEAR)))
    assert len(source.tail(2)) == 2 and source.tail(1)[0][1].shape == (48, 128, 3)
    phone = _rotate_display(encode(tmp_path / "turned.mp4", [stored] * 3, sar=Fraction(4, 3)))
    assert open_video(phone, None).frame_hw == (128, 48)
    assert open_video(encode(tmp_path / "square.mp4", [stored] * 3, sar=Fraction(1, 1)), None).frame_hw == (48, 96)


def _vfr(path, times, size=(48, 64)):
    """Frames at the given presentation times (seconds), plain PyAV, ms clock; frame i has grey level 8i."""
    h, w = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=20)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            f = av.VideoFrame.from_ndarray(np.full((h, w, 3), 8 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = round(t * 1000), Fraction(1, 1000)
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return path


def test_a_variable_frame_rate_video_keeps_its_frame_times_and_sound_in_its_overlay(tmp_path):
    """20 frames 50 ms apart, then 10 frames 200 ms apart (a phone's variable rate): the source gives each
    frame's time; VideoWriter keeps them in the file and plays the sound up to the last frame's end, so
    the sound at 2.0 s plays with the frame shown at 2.0 s (frame 25), not 0.75 s later."""
    times = [0.05 * i for i in range(20)] + [1.0 + 0.2 * i for i in range(10)]
    source = open_video(_vfr(tmp_path / "vfr.mkv", times), None, keep_rgb=True)
    assert len(source) == 30 and source.times == pytest.approx(times, abs=1e-3)
    beep = np.concatenate([_tone(2.0, 440), _tone(1.2, 1000)])  # 1000 Hz from 2.0 s on
    out = tmp_path / "overlay.mp4"
    with VideoWriter(out, source.fps, sound=(beep, 16000), times=source.times) as writer:
        for _, rgb in source:
            writer.write(rgb)
    with av.open(str(out)) as c:
        written = [f.time for f in c.decode(video=0)]
    assert written == pytest.approx(times, abs=1e-3)
    _, rate, seconds, samples = read_sound(out)
    assert rate == 16000 and seconds == pytest.approx(2.8 + 2.8 / 29, abs=0.03)  # the last frame's end
    assert _dominant_hz(samples[int(2.1 * rate):int(2.6 * rate)]) == pytest.approx(1000, abs=20)
    assert _dominant_hz(samples[int(1.2 * rate):int(1.9 * rate)]) == pytest.approx(440, abs=20)
    assert ImageFiles.times is None  # frame folders: frame i at i / fps


def test_an_mkv_cut_short_is_warned_about_and_a_whole_one_is_not(tmp_path):
    """An mkv (or webm) keeps its duration in its header and decodes what is left of a partial download
    without an error: the frames decoded ending well before that duration is warned about."""
    noise = np.random.default_rng(0)
    frames = [noise.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(60)]
    whole = encode(tmp_path / "whole.mkv", frames, rate=10)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert cut_short_warning(open_video(whole, None, warn=None)) is None
    short = open_video(cut, None, warn=None)
    assert 2 <= len(short) < 40
    assert f"says it lasts 6.0 s but the {len(short)} frames decoded end at" in cut_short_warning(short)


def test_gif_delays_add_up_to_the_video_and_none_is_too_short_for_a_browser(tmp_path):
    """GIF delays are whole centiseconds and browsers show one under 2 cs as 10 cs: a 60 fps overlay
    drops frames due sooner (two of every three kept), a 29.97 fps one alternates 30 and 40 ms, and each GIF
    lasts as long as its video, instead of playing 6x slow or 11 % fast."""
    from utils.visualize import gif_timing

    keep, delays = gif_timing([i / 60 for i in range(60)], 1.0)
    assert min(delays) >= 20 and sum(delays) == 1000 and len(keep) == 40  # two frames of every three
    keep, delays = gif_timing([i * 1001 / 30000 for i in range(30)], 30 * 1001 / 30000)
    assert len(keep) == 30 and set(delays) == {30, 40} and sum(delays) == 1000
    with VideoWriter(tmp_path / "fast.gif", fps=60) as writer:
        for f in square_frames(15):
            writer.write(f)
    with Image.open(tmp_path / "fast.gif") as im:
        shown = []
        for i in range(im.n_frames):
            im.seek(i)
            shown.append(im.info["duration"])
    assert min(shown) >= 20 and sum(shown) == 250
