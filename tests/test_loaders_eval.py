"""YouTube-Objects and MoCA loaders on folders written in their real on-disk formats, and their
inference + metric outputs with a tiny model."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import inference_swin_medvt_avos as script
from avos import inference as inf
from datasets.moca import moca_sequences, read_annotations
from datasets.path_config import DatasetNotFoundError
from datasets.synthetic import make_sequence
from datasets.youtube_objects import youtube_objects_sequences
from models import build_model
from utils import metrics
from utils.cli import UserError

H, W = 48, 80


# ------------------------------------------------------------------------------------ data writers
def write_youtube_objects(root: Path) -> Path:
    """YouTube-Objects layout: frames/<class>/data/<vid>/shots/<shot>/frameNNNN.jpg, JPEG masks
    youtube_masks/…/labels/%05d.jpg for every other frame, and val_seqs.txt. ``cat`` has no masks."""
    seqs = {"aeroplane/data/0001/shots/001": 5, "aeroplane/data/0001/shots/002": 3,
            "aeroplane/data/0002/shots/001": 3, "bird/data/0005/shots/003": 4, "cat/data/0001/shots/001": 3}
    lines = []
    for k, (rel, n) in enumerate(seqs.items()):
        frames, masks = make_sequence(np.random.default_rng(k), n, H, W)
        img_dir, gt_dir = root / "frames" / rel, root / "youtube_masks" / rel / "labels"
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for t, (frame, mask) in enumerate(zip(frames, masks)):
            Image.fromarray(frame).save(img_dir / f"frame{t + 1:04d}.jpg")  # 1-based, as the dataset
            if t % 2 == 0 and not rel.startswith("cat"):
                # grey 100 fg: ≥ 80 → foreground; grey 60 "halo" < 80 → background
                grey = np.where(mask, 100, 0).astype(np.uint8)
                grey[np.roll(mask, 3, axis=1) & ~mask] = 60
                Image.fromarray(grey).save(gt_dir / f"{t + 1:05d}.jpg", quality=100)
        lines.append(f"frames/{rel}")
    (root / "val_seqs.txt").write_text("\n".join(lines) + "\n")
    return root


MOCA_VIDEOS = {"arctic_fox": 8, "flounder": 7, "unlisted_crab": 6}


def write_moca(root: Path) -> Path:
    """MoCA layout: JPEGImages/<video>/%05d.jpg (64x112), val_seqs.txt and annotations.csv with a
    header, bbox/motion literals, ``{}`` (= previous motion) and ``[]`` (no box) rows, unsorted."""
    rows = [
        ["1", "/arctic_fox/00002.jpg", "[2, 30.0, 10.5, 20.0, 14.0]", "{}"],
        ["0", "/arctic_fox/00000.jpg", "[2, -4.0, 8.0, 30.0, 20.0]", '{"1": "0"}'],
        ["2", "/arctic_fox/00003.jpg", "[]", "{}"],
        ["3", "/arctic_fox/00005.jpg", "[2, 60.0, 30.0, 22.0, 16.0]", '{"1": "2"}'],
        ["4", "/flounder/00001.jpg", "[2, 10.0, 12.0, 40.0, 30.0]", '{"1": "1"}'],
        ["5", "/flounder/00004.jpg", "[2, 12.0, 14.0, 40.0, 30.0]", "{}"],
        ["6", "/unlisted_crab/00000.jpg", "[2, 1.0, 1.0, 5.0, 5.0]", '{"1": "0"}'],
    ]
    root.mkdir(parents=True)
    with (root / "annotations.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metadata_id", "file_list", "spatial_coordinates", "metadata"])
        writer.writerows(rows)
    for k, (video, n) in enumerate(MOCA_VIDEOS.items()):
        frames, _ = make_sequence(np.random.default_rng(100 + k), n, 64, 112)
        d = root / "JPEGImages" / video
        d.mkdir(parents=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(d / f"{t:05d}.jpg")
    (root / "val_seqs.txt").write_text("arctic_fox\nflounder\n")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("loaders")
    torch.manual_seed(0)
    model = build_model("tiny")
    ckpt = base / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, ckpt)
    return {"ytbo": write_youtube_objects(base / "YouTube-Objects"), "moca": write_moca(base / "MoCA"),
            "ckpt": ckpt, "base": base}


# ------------------------------------------------------------------------------------ YouTube-Objects
def test_youtube_objects_loader(data):
    seqs = youtube_objects_sequences(data["ytbo"])
    names = [s.name for s in seqs]
    assert names == ["aeroplane/data/0001/shots/001", "aeroplane/data/0001/shots/002",
                     "aeroplane/data/0002/shots/001", "bird/data/0005/shots/003", "cat/data/0001/shots/001"]
    first = seqs[0]
    assert first.num_frames == 5 and first.frames[0].name == "frame0001.jpg"
    assert first.meta == {"class": "aeroplane", "video": "0001"}
    # frameNNNN.jpg ↔ labels/%05d.jpg, None where the frame has no mask
    assert [m.name if m else None for m in first.masks] == ["00001.jpg", None, "00003.jpg", None, "00005.jpg"]
    assert all(m is None for m in seqs[-1].masks)
    gt = first.read_mask(0, threshold=79)
    raw = np.asarray(Image.open(first.masks[0]).convert("L"))
    assert gt.any() and not gt[(raw > 20) & (raw < 80)].any()  # the grey-60 halo is background


def test_youtube_objects_loader_errors(data, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--youtube_objects_root"):
        youtube_objects_sequences(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="--youtube_objects_list"):
        youtube_objects_sequences(data["ytbo"], tmp_path / "missing.txt")


def test_youtube_objects_inference_and_metric(data, tmp_path):
    out = tmp_path / "ytbo"
    res = script.main(["--model_path", str(data["ckpt"]), "--dataset", "ytbo", "--youtube_objects_root",
                       str(data["ytbo"]), "--val_size", "48", "--output_dir", str(out), "--device", "cpu"])["ytbo"]
    assert res["frames"] == res["n_frames"] and res["frames_per_s"] > 0  # the run's speed, for summary.json
    seqs = youtube_objects_sequences(data["ytbo"])
    ious = {}
    for seq in seqs:
        # only annotated frames are predicted; outputs keep the class/data/vid/shots/shot layout
        expected = sorted(f.stem for f, m in zip(seq.frames, seq.masks) if m is not None)
        assert sorted(p.stem for p in (out / "bin_mask" / seq.name).glob("*.png")) == expected
        assert sorted(p.stem for p in (out / "logits" / seq.name).glob("*.png")) == expected
        ious[seq.name] = []
        for i, m in enumerate(seq.masks):
            if m is None:
                continue
            pred = np.asarray(Image.open(out / "bin_mask" / seq.name / f"{seq.frames[i].stem}.png"))
            prob = np.asarray(Image.open(out / "logits" / seq.name / f"{seq.frames[i].stem}.png"))
            assert pred.shape == (H, W) and set(np.unique(pred)) <= {0, 255}
            assert ((prob >= 128) <= (pred == 255)).all()  # p ≥ 0.5 is foreground
            ious[seq.name].append(metrics.jaccard(pred > 0, seq.read_mask(i, threshold=79)))
    # metric recomputed from the files: video means (shots pooled) → class means → mean over classes
    assert res["sequences"]["cat/data/0001/shots/001"]["n_frames"] == 0
    aero_video1 = np.mean(ious["aeroplane/data/0001/shots/001"] + ious["aeroplane/data/0001/shots/002"])
    aero = np.mean([aero_video1, np.mean(ious["aeroplane/data/0002/shots/001"])])
    assert res["classes"]["aeroplane"] == pytest.approx(aero)
    assert set(res["classes"]) == {"aeroplane", "bird"}  # cat has no masks: left out, not NaN
    assert res["mIoU"] == pytest.approx(np.mean([aero, np.mean(ious["bird/data/0005/shots/003"])]))
    saved = json.loads((out / "youtube_objects_results.json").read_text())
    assert saved["mIoU"] == pytest.approx(res["mIoU"])
    with (out / "youtube_objects_classes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["sequence"] for r in rows] == ["aeroplane", "bird", "Overall"]
    assert (out / "out.log").read_text().count("Youtube Objects Average IoU") == 1


def test_youtube_objects_sequence_subset_by_class(data, tmp_path):
    res = script.main(["--model_path", str(data["ckpt"]), "--dataset", "ytbo", "--youtube_objects_root",
                       str(data["ytbo"]), "--val_size", "48", "--output_dir", str(tmp_path), "--device", "cpu",
                       "--sequences", "bird"])["ytbo"]
    assert list(res["sequences"]) == ["bird/data/0005/shots/003"]
    with pytest.raises(UserError, match="unknown sequence"):
        script.main(["--model_path", str(data["ckpt"]), "--dataset", "ytbo", "--youtube_objects_root",
                     str(data["ytbo"]), "--output_dir", str(tmp_path / "dog"), "--device", "cpu", "--sequences", "dog"])
    assert not (tmp_path / "dog").exists()


# ------------------------------------------------------------------------------------ MoCA
def test_moca_read_annotations(data):
    ann = read_annotations(data["moca"] / "annotations.csv")
    fox = ann["arctic_fox"]
    assert sorted(fox) == ["00000", "00002", "00005"]  # the [] row is dropped
    assert fox["00000"].box == (0.0, 8.0, 30.0, 28.0)  # xmin clamped to 0; xmax = clamped xmin + width
    assert fox["00000"].motion == "0" and fox["00002"].motion == "0"  # {} = previous (sorted) row
    assert fox["00005"].motion == "2"
    assert ann["flounder"]["00004"].motion == "1"
    assert fox["00002"].box == (30.0, 10.5, 50.0, 24.5)


def test_moca_loader(data, tmp_path):
    seqs = moca_sequences(data["moca"])
    assert [s.name for s in seqs] == ["arctic_fox", "flounder"]  # the list file decides
    assert seqs[0].meta["annotated"] == [0, 2, 5] and seqs[1].meta["annotated"] == [1, 4]
    assert seqs[0].num_frames == 8 and all(m is None for m in seqs[0].masks)
    with pytest.raises(DatasetNotFoundError, match="--moca_root"):
        moca_sequences(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="--moca_annotations"):
        moca_sequences(data["moca"], annotations_csv=tmp_path / "none.csv")


def _box_mask(shape_hw, box, orig_hw) -> np.ndarray:
    """0/255 mask at ``shape_hw`` whose box, rescaled to ``orig_hw``, is ``box``."""
    sy, sx = shape_hw[0] / orig_hw[0], shape_hw[1] / orig_hw[1]
    x0, y0, x1, y1 = (int(round(v)) for v in (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    m = np.zeros(shape_hw, np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def test_moca_evaluation_keys_by_file_name(data, tmp_path):
    """Masks drawn exactly on each annotated frame's box score 1 per frame. Frames 00002/00005 of
    arctic_fox are the 2nd/3rd saved files: pairing by position (555a462) would score them wrong."""
    seqs = moca_sequences(data["moca"])
    for seq in seqs:
        for i in seq.meta["annotated"]:
            box = seq.meta["boxes"][seq.frames[i].stem]
            # saved at twice the original size: the evaluator rescales the box back
            (tmp_path / seq.name).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / seq.name / f"{seq.frames[i].stem}.png"),
                        _box_mask((128, 224), box.box, (64, 112)))
    res = inf.evaluate_moca(tmp_path, seqs)
    assert res["mean_iou"] == pytest.approx(1.0, abs=0.02)
    fox = res["sequences"]["arctic_fox"]
    assert fox["locomotion_num"] == 2 and fox["static_num"] == 1 and fox["deformation_num"] == 0
    assert res["n_frames"] == 5 and res["SR_0.9"] == 1.0


def test_moca_inference_outputs(data, tmp_path):
    out = tmp_path / "moca"
    res = script.main(["--model_path", str(data["ckpt"]), "--dataset", "moca", "--moca_root", str(data["moca"]),
                       "--val_size", "40", "--output_dir", str(out), "--device", "cpu", "--flip", "--msc",
                       "--save_overlay", "--overlay_format", "gif"])["moca"]
    # masks only for annotated frames, at the input resolution (shorter side 40 → 40x70)
    assert sorted(p.name for p in (out / "arctic_fox").glob("*.png")) == ["00000.png", "00002.png", "00005.png"]
    assert res["frames"] == res["n_frames"] and res["frames_per_s"] > 0  # the run's speed, for summary.json
    mask = np.asarray(Image.open(out / "flounder" / "00004.png"))
    assert mask.shape == (40, 70) and set(np.unique(mask)) <= {0, 255}
    assert not (out / "unlisted_crab").exists()
    assert (out / "overlay" / "arctic_fox.gif").is_file()
    assert np.asarray(Image.open(out / "overlay" / "arctic_fox" / "00000.png")).shape == (64, 112, 3)
    # the metric equals the box IoU recomputed from the saved files
    seqs = moca_sequences(data["moca"])
    per_video = {s.name: [metrics.moca_box_iou(np.asarray(Image.open(out / s.name / f"{s.frames[i].stem}.png")),
                                               s.meta["boxes"][s.frames[i].stem].box, (64, 112))
                          for i in s.meta["annotated"]] for s in seqs}
    assert res["mean_iou"] == pytest.approx(metrics.moca_summary(per_video)["mean_iou"])
    rows = list(csv.DictReader((out / "MoCA_results.csv").open()))
    assert [r["sequence"] for r in rows] == ["arctic_fox", "flounder", "Overall"]
    assert "--msc ignored on MoCA" in (out / "out.log").read_text()  # CVPR'23 model: single scale


# ------------------------------------------------------------------------------------ several processes
def test_torchrun_shares_the_sequences_out_and_scores_as_one_process(data, tmp_path, one_thread):
    """Each dataset under torchrun (two Gloo processes): each process predicts every other sequence and
    writes its files; rank 0 scores them all. Files, scores and results equal one process's, and the
    speed counts both processes' frames."""
    from checkpoint_asserts import ROOT, run_torchrun
    from datasets.synthetic import make_synthetic_davis

    davis = make_synthetic_davis(tmp_path / "DAVIS", num_train=0, num_val=3, num_frames=4, size_hw=(H, W))
    roots = {"davis": ["--davis16_root", str(davis)], "ytbo": ["--youtube_objects_root", str(data["ytbo"])],
             "moca": ["--moca_root", str(data["moca"])]}
    speed = {"frames", "wall_s", "frames_per_s", "output_dir"}
    for dataset, root in roots.items():
        argv = ["--model_path", str(data["ckpt"]), "--dataset", dataset, *root, "--val_size", "48", "--device", "cpu"]
        two, one = tmp_path / f"{dataset}_two", tmp_path / f"{dataset}_one"
        r = run_torchrun(ROOT / "inference_swin_medvt_avos.py", [*argv, "--output_dir", str(two)])
        assert "2 processes, each predicting 1 sequence in 2; rank 0 scores them" in r.stdout
        alone = script.main([*argv, "--output_dir", str(one)])
        files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
        assert sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file()) == files
        assert len({f.parent for f in files if f.suffix == ".png"}) >= 2, files  # both processes' sequences
        for f in files:
            if f.suffix in (".png", ".csv") or f.name.endswith("_results.json") or f.name.endswith("_classes.json"):
                assert (two / f).read_bytes() == (one / f).read_bytes(), f
        shared = json.loads((two / "summary.json").read_text())[dataset]
        assert {k: v for k, v in shared.items() if k not in speed} == \
            json.loads(json.dumps(metrics.jsonable({k: v for k, v in alone[dataset].items() if k not in speed})))
        assert shared["frames"] == alone[dataset]["frames"], dataset
        [rank0] = re.findall(r"^(\d+) frames in [\d.]+ s", r.stdout, re.M)  # rank 0's share, logged as it ends
        assert 0 < int(rank0) < shared["frames"], (rank0, shared["frames"])
        assert f"2 processes: {shared['frames']} frames in " in r.stdout
        assert not (two / "INCOMPLETE").exists() and "rank 0 scores them" in (two / "out.log").read_text()


def test_write_json_replaces_a_record_whole_or_not_at_all(tmp_path, monkeypatch):
    """A summary or history.json is rewritten through a temporary file: a write that fails half-way (a full
    disk, a kill) leaves the former record, not a truncated one; NaN and numpy numbers are written as JSON."""
    path = tmp_path / "summary.json"
    metrics.write_json(path, {"J": np.float32(0.5), "F": float("nan"), "frames": np.int64(3)})
    assert json.loads(path.read_text()) == {"J": 0.5, "F": None, "frames": 3}
    real = Path.write_text

    def half_then_full_disk(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(OSError):
        metrics.write_json(path, {"J": 0.9})
    monkeypatch.undo()
    assert json.loads(path.read_text())["J"] == 0.5 and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_davis_masks_in_colour_or_truncated_are_read_as_masks_or_named(tmp_path):
    """Annotations saved as RGB with the object in green scored J = 0 (the first channel only was read);
    grey masks stored as RGB, palette and L masks read as before; a truncated annotation is one line
    naming it (it was PIL's traceback, after every prediction had been written)."""
    square = np.zeros((24, 32), np.uint8)
    square[6:18, 8:24] = 255
    for name, gt in {"green": np.stack([0 * square, square, 0 * square], -1),
                     "grey_rgb": np.stack([square] * 3, -1), "grey": square}.items():
        for root, image in (("pred", square), ("gt", gt)):
            for i in range(3):
                (tmp_path / root / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(tmp_path / root / name / f"{i:05d}.png")
    palette = Image.fromarray((square > 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 0, 1] + [0] * 762)  # index 1 is a colour almost black: still the object
    palette.save(tmp_path / "gt" / "grey" / "00001.png")
    results = metrics.evaluate_sequences(tmp_path / "pred", tmp_path / "gt", drop_first_last=False)
    assert {s: v["J_mean"] for s, v in results["sequences"].items()} == {"green": 1.0, "grey_rgb": 1.0, "grey": 1.0}
    cut = tmp_path / "gt" / "grey" / "00002.png"
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    with pytest.raises(UserError, match=r"00002\.png: not a readable image"):
        metrics.evaluate_sequences(tmp_path / "pred", tmp_path / "gt", drop_first_last=False)
