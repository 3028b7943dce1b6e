"""models.predictor: the streaming predictor equals the offline protocols it replaced, bit for bit,
and holds a bounded number of frames.

The references below are the previous offline loops (every frame in memory): the AVOS
``VideoPredictor.predict_clip`` loop (binary, sigmoid, scales averaged, flip merged) and the VSS
``predict_video`` loop (multi-class, softmax merge with flip, raw logits otherwise, chunk or centre).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datasets.stream import TensorFrames
from models import build_model
from models.predictor import VideoPredictor, Window
from utils.clips import chunk_clips, wraparound_clip
from vss.config import vss_config

T, H, W, OUT = 4, 32, 48, (40, 56)
LENGTHS = (1, 2, 5, 6, 7, 40)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    binary = build_model("tiny").eval()
    torch.manual_seed(1)
    multi = build_model(vss_config("tiny", 5)).eval()
    return {"binary": binary, "multi": multi}


def frames_of(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, H, W, generator=g)


@torch.inference_mode()
def reference_binary(model, frames, scales, flip, merge):
    """The previous AVOS protocol: each frame the centre of its wrap-around clip."""
    n, out = frames.shape[0], {}
    for i in range(n):
        x = frames[wraparound_clip(i, n, T)][None]
        if flip:
            x = torch.cat([x, x.flip(-1)])
        probs = []
        for s in scales:
            xs = x if s == 1 else F.interpolate(x.flatten(0, 1), size=(int(H * s), int(W * s)), mode="bilinear",
                                                align_corners=False).unflatten(0, x.shape[:2])
            logits = model(xs)["pred_masks"].float()
            probs.append(F.interpolate(logits, size=OUT, mode="bilinear", align_corners=False).sigmoid())
        p = torch.stack(probs).mean(0)
        if flip:
            a, b = p[0], p[1].flip(-1)
            p = torch.maximum(a, b) if merge == "max" else (a + b) / 2
        else:
            p = p[0]
        out[i] = p[T // 2]
    return out


@torch.inference_mode()
def reference_multi(model, frames, window, flip):
    """The previous VSS loop: class ids per frame; a frame in two clips keeps its first prediction."""
    n = frames.shape[0]
    if window == "centre":
        jobs = [(wraparound_clip(i, n, T), {T // 2: i}) for i in range(n)]
    else:
        jobs = [(idx, dict(enumerate(idx))) for idx in chunk_clips(n, T)]
    preds, done = {}, set()
    for idx, keep in jobs:
        keep = {k: i for k, i in keep.items() if i not in done}
        if not keep:
            continue
        x = frames[idx][None]
        if flip:
            x = torch.cat([x, x.flip(-1)])
        logits = model(x)["pred_masks"].float()
        for k, i in keep.items():
            scores = F.interpolate(logits[:, :, k], size=OUT, mode="bilinear", align_corners=False)
            if flip:
                probs = scores.softmax(1)
                scores = (probs[:1] + probs[1:].flip(-1)) / 2
            preds[i] = scores[0].argmax(0)
            done.add(i)
    return preds


TTA = [((1.0,), False, "mean"), ((1.0,), True, "mean"), ((0.75, 1.0, 1.25), True, "max")]


# 40 frames with scales runs once, in the next test, to keep the suite fast.
@pytest.mark.parametrize("n,scales,flip,merge", [(n, *t) for n in LENGTHS for t in TTA if n != 40 or t[0] == (1.0,)])
def test_centre_window_equals_the_offline_protocol_binary(models, n, scales, flip, merge):
    frames = frames_of(n)
    want = reference_binary(models["binary"], frames, scales, flip, merge)
    pred = VideoPredictor(models["binary"], "centre", T, scales=scales, flip=flip, flip_merge=merge)
    got = list(pred.stream(TensorFrames(frames), OUT))
    assert [p.index for p in got] == list(range(n))
    for p in got:
        assert p.probs.shape == (1, *OUT)
        assert torch.equal(p.probs[0], want[p.index]), f"frame {p.index} differs"
    assert pred.max_held <= Window("centre", T).max_frames(1)


def test_centre_window_40_frames_with_scales_and_flip(models):
    """The 40-frame case with scales and flip, on the frames whose clips wrap or not (all compared)."""
    frames = frames_of(40, seed=3)
    want = reference_binary(models["binary"], frames, (0.75, 1.0), True, "mean")
    pred = VideoPredictor(models["binary"], "centre", T, scales=(0.75, 1.0), flip=True)
    for p in pred.stream(TensorFrames(frames), OUT):
        assert torch.equal(p.probs[0], want[p.index])


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("window", ["centre", "chunk"])
@pytest.mark.parametrize("flip", [False, True])
def test_windows_equal_the_offline_loop_multiclass(models, n, window, flip):
    frames = frames_of(n, seed=1)
    want = reference_multi(models["multi"], frames, window, flip)
    pred = VideoPredictor(models["multi"], window, T, flip=flip, activation="softmax" if flip else "none")
    got = {p.index: p.probs for p in pred.stream(TensorFrames(frames), OUT)}
    assert sorted(got) == list(range(n))
    for i, probs in got.items():
        assert probs.shape == (5, *OUT)
        assert torch.equal(probs.argmax(0), want[i]), f"frame {i} differs"
    assert pred.forwards == (n if window == "centre" else len(chunk_clips(n, T)))


class CountingFrames(TensorFrames):
    """Counts the frames alive in the predictor: each payload is an object we can track."""

    def __init__(self, frames):
        super().__init__(frames)
        self.read = 0

    def __iter__(self):
        for f in self.frames:
            self.read += 1
            yield f, object()

    def tail(self, k):
        self.read += k
        return [(f, object()) for f in self.frames[len(self) - k:]]


@pytest.mark.parametrize("window,batch", [("centre", 1), ("centre", 3), ("chunk", 1), ("chunk", 2)])
def test_buffer_is_bounded_by_the_window_not_the_video(window, batch):
    """A fake model (no compute) on 200 frames: the predictor never holds more than its bound, reads
    each frame once, and predicts every frame once, in order."""

    class Echo(torch.nn.Module):
        def forward(self, x):  # [B, T, 3, h, w] → logits [B, T, h, w] = the first channel
            return {"pred_masks": x[:, :, 0]}

    n = 200
    frames = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    pred = VideoPredictor(Echo(), window, 6, activation="none", batch_clips=batch)
    source = CountingFrames(frames)
    got = [(p.index, float(p.probs[0, 0, 0])) for p in pred.stream(source, (4, 4))]
    assert got == [(i, float(i)) for i in range(n)]  # each frame's own prediction, in order
    assert source.read == n  # every frame decoded once (the tail up front for centre, the rest in order)
    bound = Window(window, 6).max_frames(batch)
    assert 0 < pred.max_held <= bound
    assert pred.max_held < n / 10
    jobs = n if window == "centre" else len(chunk_clips(n, 6))
    assert pred.forwards == -(-jobs // batch)


def test_batched_clips_match_one_clip_per_forward(models):
    frames = frames_of(9, seed=2)
    one = VideoPredictor(models["binary"], "centre", T, flip=True)
    three = VideoPredictor(models["binary"], "centre", T, flip=True, batch_clips=3)
    a = {p.index: p.probs for p in one.stream(TensorFrames(frames), OUT)}
    b = {p.index: p.probs for p in three.stream(TensorFrames(frames), OUT)}
    assert three.forwards == 3 and one.forwards == 9
    for i in a:
        torch.testing.assert_close(a[i], b[i], atol=1e-5, rtol=0)


def test_only_wanted_frames_are_predicted(models):
    frames = frames_of(12, seed=4)
    pred = VideoPredictor(models["binary"], "centre", T)
    full = {p.index: p.probs for p in pred.stream(TensorFrames(frames), OUT)}
    some = VideoPredictor(models["binary"], "centre", T)
    got = {p.index: p.probs for p in some.stream(TensorFrames(frames), OUT, wanted={0, 5, 11}.__contains__)}
    assert sorted(got) == [0, 5, 11] and some.forwards == 3
    for i in got:
        assert torch.equal(got[i], full[i])


def test_window_rejects_unknown_kind():
    with pytest.raises(ValueError, match="window"):
        Window("sliding", 6)


class _FixedLogits(torch.nn.Module):
    """A 'model' with fixed random logits [B, K, T, h, w] (the flipped half of a flip batch mirrored)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.logits = torch.randn(k, T, 6, 8, generator=g)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a parameter, so the predictor finds the device

    def forward(self, x):
        b = x.shape[0]
        logits = F.interpolate(self.logits, size=(x.shape[-2] // 4, x.shape[-1] // 4), mode="bilinear",
                               align_corners=False)[None].repeat(b, 1, 1, 1, 1)
        if b > 1 and torch.equal(x[0], x[b // 2].flip(-1)):  # the mirrored half of a flip batch
            logits[b // 2:] = logits[b // 2:].flip(-1)
        return {"pred_masks": logits}


# softmax at once: below _SOFTMAX_AT_ONCE_VALUES (the frames here), all classes in one step, exactly as
# `probs`; "softmax stepped": that limit set to 0, so its sums over the classes take a first pass.
@pytest.mark.parametrize("activation,flip,scales", [("none", False, (1.0,)), ("none", True, (1.0, 0.75)),
                                                    ("sigmoid", True, (1.0,)), ("softmax at once", True, (1.0, 0.75)),
                                                    ("softmax stepped", True, (1.0,)),
                                                    ("softmax stepped", True, (1.0, 0.75))])
def test_class_ids_a_few_classes_at_a_time_are_the_argmax_of_all(monkeypatch, activation, flip, scales):
    """The arg-max of a multi-class frame computed 3 classes at a time (memory at large frame sizes) is
    the arg-max over all classes: the same class, or (the CPU's resize rounds a channel by its place in
    a vector) one whose score is within float rounding of it. Softmax (VSS ``--flip``) too, once its
    frames are large: its sums over all classes come from a first pass, 3 classes at a time."""
    import models.predictor as predictor_module

    k, out = 11, (50, 70)
    monkeypatch.setattr(predictor_module, "_CHUNK_VALUES", 3 * out[0] * out[1] * (2 if flip else 1) * len(scales))
    if activation == "softmax stepped":
        monkeypatch.setattr(predictor_module, "_SOFTMAX_AT_ONCE_VALUES", 0)
    pred = VideoPredictor(_FixedLogits(k), "chunk", T, scales=scales, flip=flip, activation=activation.split()[0])
    clips = frames_of(T)[None]
    keep = [dict(enumerate(range(T)))]
    probs = pred.predict_clips(clips, keep, lambda _f: out)
    ids = pred.predict_clips(clips, keep, lambda _f: out, ids=True)
    for (f, p), (g, i) in zip(probs, ids):
        assert f == g and i.dtype == torch.uint8 and i.shape == out
        full = p.argmax(0)
        differ = i.long() != full
        if activation == "softmax at once":
            assert not differ.any()
        chosen = p.gather(0, i.long()[None])[0]
        assert (p.max(0).values - chosen).abs().max() <= 1e-5  # always a maximum, within rounding
        assert differ.float().mean() < 0.01
    assert len(torch.cat([i.flatten() for _, i in ids]).unique()) > 3  # the chunks' classes all take part
