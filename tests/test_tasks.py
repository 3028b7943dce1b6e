"""models.tasks: one answer to "which task is this checkpoint's model for", and every script's refusal of
another task's file by it (inference --model_path, trainer --resume, export_onnx.py's recorded task)."""
from __future__ import annotations

import argparse

import pytest
import torch

from models import build_model
from models.tasks import OTHER, TASKS, check_task, checkpoint_task
from utils.cli import UserError

CPU = torch.device("cpu")


def _config(name: str = "tiny", **changes) -> dict:
    return build_model(name, **changes).cfg.to_dict()


@pytest.mark.parametrize("ckpt, task", [
    ({"model": {}}, None),  # an authors' release: no config, no task (the script's flags decide)
    ({"config": _config()}, "avos"),
    ({"config": _config("avs_tiny")}, "avs"),
    ({"config": _config(num_classes=124)}, "vss"),
    ({"config": _config(num_classes=5), "args": argparse.Namespace(vspw_root="v")}, "vss"),  # a VSS run's subset
    ({"config": _config(num_classes=5), "args": {"vspw_root": "v"}}, "vss"),
    ({"config": _config(num_classes=80)}, "a2d"),
    ({"config": _config(num_classes=5)}, OTHER),
    ({"config": {**_config(), "num_classes": "5"}}, None),  # damaged: refused where the config is read
    ({"config": _config(num_classes=80), "task": "vss"}, "vss"),  # what the file records wins
    ({"config": _config(num_classes=124), "args": argparse.Namespace(a2d_root="a")}, "a2d"),  # the trainer's data
    ({"config": _config(num_classes=80), "args": argparse.Namespace(vspw_root="v")}, "vss"),
    ({"config": _config(num_classes=5), "args": argparse.Namespace(davis16_root="d")}, "avos"),
])
def test_checkpoint_task(ckpt, task):
    assert checkpoint_task(ckpt) == task


@pytest.mark.parametrize("ckpt, says", [
    ({"task": "avs", "config": _config()}, "records the task avs, but holds a model of 1 class"),
    ({"task": "vss", "config": _config("avs_tiny")}, "records the task vss, but holds an AVS model of 1 class"),
    ({"task": "avos", "config": _config(num_classes=3)}, "records the task avos, but holds a model of 3 classes")])
def test_a_recorded_task_its_model_contradicts_is_refused(ckpt, says):
    with pytest.raises(UserError, match=rf"^f\.pth {says} \(a damaged file\?\)$"):
        checkpoint_task(ckpt, "f.pth")
    checkpoint_task({"task": "a2d", "config": _config(num_classes=1)})  # an A2D run may have one class


@pytest.mark.parametrize("recorded", ["segmentation", 3, ["avos"]])
def test_a_damaged_recorded_task_is_refused_by_name(recorded):
    with pytest.raises(UserError, match=r"^--model_path x\.pth records the task .*, not one of avos, vss, a2d, avs "
                                        r"\(a damaged file\?\)$"):
        check_task({"task": recorded}, "avos", "--model_path x.pth", TASKS["avos"].infer)


def test_check_task_names_what_the_file_holds_and_the_script_for_it():
    a2d = {"config": _config(num_classes=80)}
    with pytest.raises(UserError, match=r"^--model_path a\.pth holds an A2D model \(80 classes\), but "
                                        r"vss/inference_medvt_vss\.py is for VSS models; run it with "
                                        r"actor_action/inference_medvt_a2d\.py$"):
        check_task(a2d, "vss", "--model_path a.pth", TASKS["vss"].infer, classes_given=True)
    with pytest.raises(UserError, match=r"^--resume a\.pth holds an A2D model \(80 classes\), but "
                                        r"train_swin_medvt_avos\.py is for AVOS models; run it with "
                                        r"actor_action/train_medvt_a2d\.py$"):  # a trainer names the trainer
        check_task(a2d, "avos", "--resume a.pth", TASKS["avos"].train)
    other = {"config": _config(num_classes=5)}
    with pytest.raises(UserError, match=r"holds a 5-class model of no known task, .*if it is an A2D model, pass "
                                        r"--num_classes 5$"):
        check_task(other, "a2d", "--model_path o.pth", TASKS["a2d"].infer, classes_given=False)
    check_task(other, "a2d", "--model_path o.pth", TASKS["a2d"].infer, classes_given=True)  # taken as A2D's
    with pytest.raises(UserError, match=r"no known task, .*; give an AVOS checkpoint$"):  # AVOS: no such flag
        check_task(other, "avos", "--model_path o.pth", TASKS["avos"].infer)
    for task in TASKS:  # its own task, or an authors' file that records nothing, passes
        check_task({"task": task}, task, "f", TASKS[task].infer)
        check_task({"model": {}}, task, "f", TASKS[task].infer)
    with pytest.raises(UserError, match=r"^f holds a VSS model, but"):  # no count to give: none said
        check_task({"task": "vss"}, "a2d", "f", TASKS["a2d"].infer)


def test_an_authors_file_is_read_by_the_config_its_arguments_make(tmp_path):
    """VSS inference refused an authors' A2D release (no config; its saved arguments say 80 classes) by the
    config it resolved; read by the file alone, it has no task, and passed."""
    from models.registry import resolve_config
    from vss.config import vss_config

    authors = {"model": {}, "args": argparse.Namespace(num_classes=80, lprop_mode=0)}
    resolved, _ = resolve_config(authors, vss_config("medvt_swinb_vss", None))
    with pytest.raises(UserError, match=r"^--model_path a\.pth holds an A2D model \(80 classes\), but "
                                        r"vss/inference_medvt_vss\.py is for VSS models"):
        check_task(authors, "vss", "--model_path a.pth", TASKS["vss"].infer, False, resolved)
    check_task(authors, "vss", "--model_path a.pth", TASKS["vss"].infer, False)  # without it: no task known


def _save(path, task: str | None = None, **changes):
    model = build_model("tiny", **changes)
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(), **({"task": task} if task else {})}, path)
    return path


def test_every_inference_entry_refuses_another_tasks_checkpoint_before_building_it(tmp_path, monkeypatch):
    """The four scripts' model loaders (and export_onnx's recorded task) ask models.tasks: a file of another
    task is refused in words, naming the script for it, before a model is built."""
    import models.registry as registry
    from actor_action.inference_medvt_a2d import load_a2d_model
    from avos.model import resolve_model_config
    from avs.test_medvt import load_avs_model
    from models.convert import read_checkpoint
    from vss.common import build_from_args

    def no_build(*a, **k):
        raise AssertionError("a model was built for a file of another task")

    monkeypatch.setattr(registry, "build_loaded", no_build)
    vss = _save(tmp_path / "vss.pth", "vss", num_classes=80)  # 80 classes, but a VSS run's: the record decides
    a2d = _save(tmp_path / "a2d.pth", num_classes=80)
    avos = _save(tmp_path / "avos.pth")
    with pytest.raises(UserError, match=r"vss\.pth holds a VSS model \(80 classes\), .*inference_medvt_a2d\.py is "
                                        r"for A2D models; run it with vss/inference_medvt_vss\.py$"):
        load_a2d_model(argparse.Namespace(model_path=vss, num_classes=80), CPU)  # --num_classes does not hide it
    with pytest.raises(UserError, match=r"a2d\.pth holds an A2D model .*run it with actor_action/inference_medvt_a2d"):
        build_from_args(argparse.Namespace(model_path=a2d, num_classes=80, model="tiny"), CPU)
    authors = tmp_path / "authors_a2d.pth"  # no config; its saved arguments make --model's preset A2D's
    torch.save({"model": {}, "args": argparse.Namespace(num_classes=80, lprop_mode=0)}, authors)
    with pytest.raises(UserError, match=r"authors_a2d\.pth holds an A2D model \(80 classes\)"):
        build_from_args(argparse.Namespace(model_path=authors, num_classes=None, model="medvt_swinb_vss"), CPU)
    with pytest.raises(UserError, match=r"^--weights .*avos\.pth holds an AVOS model .*avs/test_medvt\.py is for AVS "):
        load_avs_model(argparse.Namespace(model_path=avos, model_flag="--weights"), CPU)  # the flag as typed
    with pytest.raises(FileNotFoundError, match=r"^--weights: file .*gone\.pth does not exist"):
        load_avs_model(argparse.Namespace(model_path=tmp_path / "gone.pth", model_flag="--weights"), CPU)
    with pytest.raises(UserError, match=r"^--model_path x holds a VSS model .*run it with vss/inference_medvt_vss"):
        resolve_model_config(read_checkpoint(vss), source="--model_path x")

    import export_onnx

    model = build_model("tiny", num_classes=80)
    assert export_onnx.model_task(model, read_checkpoint(vss), "f") == "vss"
    assert export_onnx.model_task(model, {}, "f") == "a2d"  # fresh weights: by the config built
    assert export_onnx.model_task(build_model("avs_tiny"), {}, "f") == "avs"
