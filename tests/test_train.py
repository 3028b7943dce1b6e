"""The AVOS training pipeline on a tiny model and a synthetic DAVIS folder (CPU, a few steps)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_asserts import assert_epoch_lines, assert_run_starts, assert_same_training_state, run_torchrun
from PIL import Image
from torch import nn

import train_swin_medvt_avos as train_script
from datasets.path_config import DatasetNotFoundError
from datasets.synthetic import make_synthetic_davis
from datasets.ytvos import ytvos_train_samples
from models import CheckpointMismatchError, MedVTConfig, build_model, load_checkpoint, read_checkpoint
from utils.checkpoint import save_checkpoint
from utils.cli import UserError
from utils.metrics import jsonable
from utils.engine import NonFiniteLossError, train_one_epoch
from utils.optim import PolyLR, param_groups
from utils.rng import capture_rng, restore_rng

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    return make_synthetic_davis(tmp_path_factory.mktemp("davis"), num_train=2, num_val=1, num_frames=7,
                                size_hw=(64, 96), seed=0)


def base_args(davis: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_config", "tiny", "--davis16_root", str(davis), "--no_ytvos", "--train_size", "64",
            "--val_size", "64", "--small_aug", "--steps_per_epoch", "2", "--device", "cpu", "--num_workers", "0",
            "--output_dir", str(out), *extra]


# --------------------------------------------------------------------------- checkpoints
def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")  # the temp file gets partly written, then the "disk fills up"
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="no space"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pth"]  # temp file removed
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1


def test_rng_roundtrip_through_a_safe_checkpoint(tmp_path):
    import random

    state = capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint({"rng": state}, tmp_path / "c.pth")
    restore_rng(read_checkpoint(tmp_path / "c.pth")["rng"])  # weights_only=True read
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


# --------------------------------------------------------------------------- optimiser and schedule
def test_param_groups_original_and_intended():
    model = build_model("tiny")
    names = {id(p): n for n, p in model.named_parameters()}
    orig = {g["name"]: g for g in param_groups(model, 1e-4, 1e-5, "original")}
    assert all(names[id(p)].startswith("label_propagator.") for p in orig["label_propagator"]["params"])
    assert any(names[id(p)].startswith("query_decoder.") for p in orig["rest"]["params"])
    assert orig["label_propagator"]["lr"] == 1e-4 and orig["rest"]["lr"] == 1e-5
    inten = {g["name"]: g for g in param_groups(model, 1e-4, 1e-5, "intended")}
    assert all(names[id(p)].startswith("backbone.") for p in inten["backbone"]["params"])
    assert inten["backbone"]["lr"] == 1e-5 and inten["non_backbone"]["lr"] == 1e-4
    n_train = sum(p.requires_grad for p in model.parameters())
    for groups in (orig, inten):
        assert sum(len(g["params"]) for g in groups.values()) == n_train


def test_poly_schedule_values():
    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1e-4},
                             {"params": [nn.Parameter(torch.zeros(1))], "lr": 1e-5}])
    sched = PolyLR(opt, max_steps=14, end_lr=1e-6, power=0.9)
    lrs = []
    for _ in range(15):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx([1e-4, 1e-5])
    assert lrs[7][0] == pytest.approx((1e-4 - 1e-6) * 0.5 ** 0.9 + 1e-6)
    assert lrs[14] == pytest.approx([1e-6, 1e-6])


# --------------------------------------------------------------------------- engine
class _Echo(nn.Module):
    """Logits = mean of the frames' channels (NaN frames give NaN logits)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, frames):
        m = frames.mean(2) * self.w
        return {"pred_masks": m, "aux_pred_masks": m}


def test_non_finite_loss_names_epoch_step_and_sequences():
    from models.losses import AVOSCriterion

    ok = {"frames": torch.randn(1, 2, 3, 4, 4), "masks": torch.ones(1, 2, 4, 4), "name": ["seq-a"],
          "centre": torch.tensor([3])}
    bad = {"frames": torch.full((1, 2, 3, 4, 4), float("nan")), "masks": torch.ones(1, 2, 4, 4),
           "name": ["seq-broken"], "centre": torch.tensor([5])}
    model = _Echo()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, step 1.*seq-broken.*\[5\]"):
        train_one_epoch(model, AVOSCriterion(), [ok, bad, ok], opt, torch.device("cpu"), epoch=3)
    assert torch.isfinite(model.w).all()  # the bad step did not update the weights


# --------------------------------------------------------------------------- the script
def test_help_runs():
    r = subprocess.run([sys.executable, str(ROOT / "train_swin_medvt_avos.py"), "--help"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    for flag in ("--lr_groups", "--resume", "--davis16_root", "--amp", "--steps_per_epoch", "label_propagator"):
        assert flag in r.stdout


def test_missing_dataset_names_the_flag(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--davis16_root"):
        train_script.main(base_args(tmp_path / "nowhere", tmp_path / "out"))


def test_missing_ytvos_names_its_flag_and_no_ytvos(davis, tmp_path):
    args = [a for a in base_args(davis, tmp_path / "out") if a != "--no_ytvos"]
    with pytest.raises(DatasetNotFoundError, match=r"--ytvos19_root.*--no_ytvos"):
        train_script.main(args + ["--ytvos19_root", str(tmp_path / "no_ytvos_here")])


def test_resume_equals_uninterrupted(davis, tmp_path):
    """2 epochs in one go == 1 epoch, stop, --resume for the second (weights, optimiser, best)."""
    one = ("--epochs", "2", "--steps_per_epoch", "1")  # the later flag wins over base_args' 2 steps
    full = train_script.main(base_args(davis, tmp_path / "full", *one))
    part = train_script.main(base_args(davis, tmp_path / "part", *one, "--stop_after", "1"))
    assert part["epochs_done"] == 1
    resumed = train_script.main(base_args(davis, tmp_path / "part", *one,
                                          "--resume", str(tmp_path / "part" / "checkpoint_last.pth")))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]  # the run's history, continued
    assert json.loads((tmp_path / "part" / "history.json").read_text()) == jsonable(resumed["history"])
    assert_run_starts(tmp_path / "part" / "train.log", "None", str(tmp_path / "part" / "checkpoint_last.pth"))
    a = read_checkpoint(tmp_path / "full" / "checkpoint_last.pth")
    b = read_checkpoint(tmp_path / "part" / "checkpoint_last.pth")
    assert_same_training_state(a, b, epoch=1)
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 2
    assert a["best"] == b["best"]
    timeless = [{k: v for k, v in h.items() if k != "train_step_time"} for h in (*full["history"], *resumed["history"])]
    assert timeless[:2] == timeless[2:]


def test_init_from_weights_only_and_resume_with_wrong_groups(davis, tmp_path):
    """A file of weights only (e.g. the authors' release) starts a new run through --init_from, with
    every weight taken; --resume is for runs, and a run's --lr_groups cannot change on resume."""
    model = build_model("tiny")
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")
    args = base_args(davis, tmp_path / "run", "--epochs", "1", "--steps_per_epoch", "1", "--no_val")
    with pytest.raises(UserError, match="not a training checkpoint.*--init_from"):
        train_script.main(args + ["--resume", str(tmp_path / "weights.pth")])
    res = train_script.main(args + ["--init_from", str(tmp_path / "weights.pth")])
    assert [h["epoch"] for h in res["history"]] == [0]
    assert f"{len(model.state_dict())} tensors from {tmp_path / 'weights.pth'}; 0 kept" in \
        (tmp_path / "run" / "train.log").read_text()
    with pytest.raises(CheckpointMismatchError, match="--lr_groups original"):
        train_script.main(args + ["--epochs", "2", "--lr_groups", "intended", "--resume", res["checkpoint_last"]])
    # a MED-VT++ (AVS) file shares some names only (72 of a tiny model's tensors were taken from one)
    from models.avs import build_avs_model

    avs = build_avs_model("avs_tiny")
    torch.save({"model": avs.state_dict(), "config": avs.cfg.to_dict(), "task": "avs"}, tmp_path / "avs.pth")
    torch.save(avs.state_dict(), tmp_path / "avs_bare.pth")  # a state dict saved on its own: no task to read
    for name in ("avs.pth", "avs_bare.pth"):
        with pytest.raises(CheckpointMismatchError, match=rf"^--init_from .*{name} holds an AVS \(MED-VT\+\+\) model"):
            train_script.main(base_args(davis, tmp_path / "run2", "--epochs", "1", "--init_from", str(tmp_path / name)))
        assert not (tmp_path / "run2").exists()


def test_resume_refuses_changed_settings_and_applies_more_epochs(davis, tmp_path):
    """A changed learning rate on --resume is refused with the differences listed (the restored
    optimiser and schedule would not use it); more --epochs stretch the poly schedule to the new end."""
    args = base_args(davis, tmp_path / "run", "--epochs", "2", "--steps_per_epoch", "1", "--no_val")
    res = train_script.main(args + ["--stop_after", "1"])
    with pytest.raises(UserError, match=r"--lr 0.0005 \(the run used 0.0001\)"):
        train_script.main(args + ["--lr", "5e-4", "--resume", "auto"])
    longer = train_script.main(args + ["--epochs", "4", "--resume", res["checkpoint_last"]])
    assert [h["epoch"] for h in longer["history"]] == [0, 1, 2, 3]
    ckpt = read_checkpoint(longer["checkpoint_last"])
    assert ckpt["lr_scheduler"]["max_steps"] == 3 and ckpt["args"].epochs == 4
    assert "decays to --end_lr by epoch 3" in (tmp_path / "run" / "train.log").read_text()


def test_checkpoint_rebuilds_model_for_inference(davis, tmp_path, fake_tensorboard, monkeypatch):
    args = base_args(davis, tmp_path / "run", "--epochs", "1", "--steps_per_epoch", "1", "--tensorboard")
    fake = sys.modules["torch.utils.tensorboard"]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed: refused before any output
    with pytest.raises(UserError, match="--tensorboard needs the 'tensorboard' package"):
        train_script.main(args)
    assert not (tmp_path / "run").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    res = train_script.main(args)
    assert 0.0 <= res["best"]["miou"] <= 1.0 and res["best"]["epoch"] == 0
    [tb] = fake_tensorboard
    assert_epoch_lines(tmp_path / "run" / "train.log", 1, res["best"], "val_miou")
    assert tb["dir"] == str(tmp_path / "run" / "tb") and tb["closed"]
    assert tb["scalars"][("val_miou", 0)] == res["best"]["miou"] and ("train_loss", 0) in tb["scalars"]
    ckpt = read_checkpoint(res["checkpoint_best"])
    assert {"model", "optimizer", "lr_scheduler", "epoch", "args", "config", "rng", "best"} <= set(ckpt)
    assert isinstance(ckpt["args"].output_dir, str)
    model = build_model(MedVTConfig.from_dict(ckpt["config"]))
    load_checkpoint(model, res["checkpoint_last"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("epoch 0/0 done") == 1 and "(1 steps/epoch/process" in log  # --steps_per_epoch 1


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_and_resume(davis, tmp_path, amp):
    """--amp trains (here on CPU, as on CUDA); fp16 keeps its loss scale in the checkpoint and a
    resumed run takes it back."""
    args = base_args(davis, tmp_path / "run", "--amp", amp, "--steps_per_epoch", "1", "--epochs", "2")
    res = train_script.main(args + ["--stop_after", "1"])
    assert np.isfinite(res["history"][0]["train_loss"])
    ckpt = read_checkpoint(res["checkpoint_last"])
    assert ("scaler" in ckpt) == (amp == "fp16")
    if amp == "fp16":
        assert ckpt["scaler"]["scale"] > 0
    resumed = train_script.main(args + ["--resume", res["checkpoint_last"]])
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]
    assert f"--amp {amp} on cpu" in (tmp_path / "run" / "train.log").read_text()


def _write_ytvos(root: Path, videos: dict[str, int]) -> Path:
    """YouTube-VOS layout: annotated frames every 5 raw frames; palette PNGs with object ids 1 and 2."""
    for vid, n in videos.items():
        (root / "train" / "JPEGImages" / vid).mkdir(parents=True)
        (root / "train" / "Annotations" / vid).mkdir(parents=True)
        for k in range(n):
            stem = f"{5 * k:05d}"
            Image.fromarray(np.full((48, 64, 3), 40 * k % 255, np.uint8)).save(
                root / "train" / "JPEGImages" / vid / f"{stem}.jpg")
            ids = np.zeros((48, 64), np.uint8)
            ids[5:20, 5:20] = 1
            ids[25:40, 30:60] = 2
            png = Image.fromarray(ids, mode="P")
            png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 253))
            png.save(root / "train" / "Annotations" / vid / f"{stem}.png")
    (root / "train" / "Annotations" / "empty_video").mkdir()  # no annotations: skipped
    return root


def test_ytvos_sampling(tmp_path):
    root = _write_ytvos(tmp_path / "ytvos", {"vid_b": 3, "vid_a": 14})
    samples = ytvos_train_samples(root, step=6)
    assert [(s.name, c) for s, c in samples] == [("vid_a", 0), ("vid_a", 6), ("vid_a", 12), ("vid_b", 0)]
    seq = samples[0][0]
    assert [p.name for p in seq.frames[:3]] == ["00000.jpg", "00005.jpg", "00010.jpg"]
    mask = seq.read_mask(2)
    ids = np.asarray(Image.open(seq.masks[2]))
    assert mask.dtype == bool and np.array_equal(mask, ids > 0)  # both objects are one foreground
    assert mask[10, 10] and mask[30, 40] and not mask[0, 0]
    with pytest.raises(DatasetNotFoundError, match="--ytvos19_root"):
        ytvos_train_samples(tmp_path / "missing")


def test_training_with_ytvos(davis, tmp_path):
    ytvos = _write_ytvos(tmp_path / "ytvos", {"vid_a": 7})
    args = [a for a in base_args(davis, tmp_path / "out", "--epochs", "1", "--steps_per_epoch", "1", "--no_val")
            if a != "--no_ytvos"]
    res = train_script.main(args + ["--ytvos19_root", str(ytvos)])
    assert res["history"][0]["train_steps"] == 1
    assert "checkpoint_best" not in res and Path(res["checkpoint_last"]).is_file()


def test_torchrun_two_processes(tmp_path, deterministic):
    """Two processes train one epoch; validation is shared out (3 sequences: one process scores two, the
    other one) and gives exactly the mIoU of one process scoring all three with the saved weights (one
    thread and deterministic kernels, as each torchrun process on the CPU)."""
    from avos.validation import evaluate_davis
    from datasets.davis16 import davis16_sequences

    davis = make_synthetic_davis(tmp_path / "davis", num_train=2, num_val=3, num_frames=7, size_hw=(64, 96), seed=0)
    out = tmp_path / "ddp"
    r = run_torchrun(ROOT / "train_swin_medvt_avos.py",
                     base_args(davis, out, "--epochs", "1", "--steps_per_epoch", "1"))
    assert "2 process(es)" in r.stdout
    ckpt = read_checkpoint(out / "checkpoint_last.pth")
    assert ckpt["epoch"] == 0 and len(ckpt["rng"]) == 2  # one RNG state per process
    assert (out / "checkpoint_best.pth").is_file()
    model = build_model(MedVTConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    alone = evaluate_davis(model, davis16_sequences(davis, "val"), torch.device("cpu"), val_size=64)
    [epoch] = json.loads((out / "history.json").read_text())
    assert len(alone["per_sequence"]) == 3 and epoch["val_miou"] == alone["miou"]
