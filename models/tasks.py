"""Which task a checkpoint's model is for, and which scripts train and run it.

One answer for every script that refuses another task's file: the inference scripts (``--model_path``),
the trainers (``--resume``), ``export_onnx.py`` (which records the answer in the file) and the ONNX
runtime. A training checkpoint records its task (``task``, written by :mod:`utils.training`); a file
written before that, or by the authors, is read by its model: MED-VT++ configs are AVS, one class is
AVOS, VSPW's class count (or a run of the VSS trainer, whose arguments name ``--vspw_root``) VSS, A2D's
class count A2D. Any other class count is ``"other"``: a multi-class MED-VT of no known task. A file
without a config (an authors' release) has no known task: the script's own flags say what it is.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.cli import UserError

from .config import MODEL_CONFIGS
from .registry import saved_args


@dataclass(frozen=True)
class Task:
    name: str  # as messages say it
    train: str  # the script that trains it
    infer: str  # the script that runs it


TASKS: dict[str, Task] = {
    "avos": Task("AVOS", "train_swin_medvt_avos.py", "inference_swin_medvt_avos.py"),
    "vss": Task("VSS", "vss/train_medvt_vss.py", "vss/inference_medvt_vss.py"),
    "a2d": Task("A2D", "actor_action/train_medvt_a2d.py", "actor_action/inference_medvt_a2d.py"),
    "avs": Task("AVS", "avs/train_medvt.py", "avs/test_medvt.py"),
}
OTHER = "other"  # a multi-class MED-VT of no known task

# The class counts that name a task (the tasks' presets hold them: VSPW 124, A2D 80).
VSS_CLASSES = MODEL_CONFIGS["medvt_swinb_vss"].num_classes
A2D_CLASSES = MODEL_CONFIGS["medvt_swinb_a2d"].num_classes


def checkpoint_task(ckpt: dict, source: str = "the checkpoint") -> str | None:
    """The task of a checkpoint dict (a key of :data:`TASKS`, or :data:`OTHER`), or None when the file
    records neither a task nor a config (an authors' release). A recorded task that is not one of
    ours is refused, naming ``source``: the file is damaged."""
    recorded = ckpt.get("task")
    if recorded is not None:
        if not isinstance(recorded, str) or recorded not in TASKS:
            raise UserError(f"{source} records the task {recorded!r:.40}, not one of {', '.join(TASKS)} (a damaged "
                            "file?)")
        return recorded
    config = ckpt.get("config")
    if not isinstance(config, dict):
        return None
    if "audio_dim" in config:
        return "avs"
    classes = config.get("num_classes", 1)
    if not isinstance(classes, int) or isinstance(classes, bool):
        return None  # a damaged config: refused where it is read, with its own message
    if classes == 1:
        return "avos"
    if classes == VSS_CLASSES or "vspw_root" in saved_args(ckpt):
        return "vss"
    return "a2d" if classes == A2D_CLASSES else OTHER


def _a(task: str) -> str:
    """The article before a task's name ("an AVOS", "a VSS")."""
    return "an" if task[0] in "aeio" else "a"


def describe(task: str, num_classes: int | None) -> str:
    """What a model of ``task`` is, for messages: "an A2D model (80 classes)"."""
    if task == OTHER:
        return f"a {num_classes}-class model of no known task"
    count = f" ({num_classes} class{'' if num_classes == 1 else 'es'})"
    classes = {"avos": " (binary masks)", "avs": " (MED-VT++, frames and audio)"}.get(task, count)
    return f"{_a(task)} {TASKS[task].name} model{classes}"


def check_task(ckpt: dict, task: str, source: str, script: str, classes_given: bool | None = None) -> None:
    """Refuse ``ckpt`` (named ``source``, e.g. "--model_path a.pth") unless it holds a model of ``task``,
    the one ``script`` trains or runs, naming what it holds and the script for that. ``classes_given``:
    whether the script's ``--num_classes`` was given (None: it has no such flag); given, a model of no
    known task is taken as one of ``task`` with that many classes."""
    found = checkpoint_task(ckpt, source)
    if found is None or found == task or (found == OTHER and classes_given):
        return
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    classes = config.get("num_classes")
    if found != OTHER:
        other = TASKS[found]
        advice = f"run it with {other.train if script == TASKS[task].train else other.infer}"
    elif classes_given is None:
        advice = f"give {_a(task)} {TASKS[task].name} checkpoint"
    else:
        advice = f"if it is one of {TASKS[task].name}, pass --num_classes {classes}"
    raise UserError(f"{source} holds {describe(found, classes)}, but {script} is for {TASKS[task].name} models; "
                    f"{advice}")
