"""Which task a checkpoint's model is for, and which scripts train and run it.

One answer for every script that refuses another task's file: the inference scripts (``--model_path``),
the trainers (``--resume``), ``export_onnx.py`` (which records the answer in the file) and the ONNX
runtime. A training checkpoint records its task (``task``, written by :mod:`utils.training`); a file
written before that is read by its model and arguments: MED-VT++ configs are AVS; then the dataset
flag its trainer recorded (``--vspw_root`` VSS, ``--a2d_root`` A2D, ``--davis16_root`` AVOS); then the
class count: one is AVOS, VSPW's 124 VSS, A2D's 80 A2D, any other ``"other"`` (a multi-class MED-VT
of no known task). A file without a config (an authors' release) is read by the config the script
decided for it from its flags and the file's saved arguments (``resolved``).
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


# The dataset flag each trainer records in its checkpoint's arguments (files written before the task was).
TRAINED_ON = {"vspw_root": "vss", "a2d_root": "a2d", "davis16_root": "avos"}


def checkpoint_task(ckpt: dict, source: str = "the checkpoint") -> str | None:
    """The task of a checkpoint dict (a key of :data:`TASKS`, or :data:`OTHER`), or None when the file
    records neither a task nor a config (an authors' release). A recorded task that is not one of ours,
    or that its model contradicts (an AVS task without the audio model, an AVOS one with classes), is
    refused naming ``source``: the file is damaged."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    classes = config.get("num_classes", 1) if config is not None else None
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool)):
        classes = None  # a damaged config: refused where it is read, with its own message
    recorded = ckpt.get("task")
    if recorded is not None:
        if not isinstance(recorded, str) or recorded not in TASKS:
            raise UserError(f"{source} records the task {recorded!r:.40}, not one of {', '.join(TASKS)} (a damaged "
                            "file?)")
        audio = config is not None and "audio_dim" in config
        if config is not None and ((recorded == "avs") != audio or (recorded == "avos" and classes != 1)):
            raise UserError(f"{source} records the task {recorded}, but holds {'an AVS' if audio else 'a'} model of "
                            f"{classes} class{'' if classes == 1 else 'es'} (a damaged file?)")
        return recorded
    if config is None:
        return None
    if "audio_dim" in config:
        return "avs"
    trained_on = next((task for flag, task in TRAINED_ON.items() if flag in saved_args(ckpt)), None)
    if trained_on is not None:
        return trained_on
    if classes is None:
        return None
    if classes == 1:
        return "avos"
    return "vss" if classes == VSS_CLASSES else "a2d" if classes == A2D_CLASSES else OTHER


def article(task: str) -> str:
    """The article before a task's name ("an AVOS", "a VSS")."""
    return "an" if task[0] in "aeio" else "a"


def describe(task: str, num_classes: int | None) -> str:
    """What a model of ``task`` is, for messages: "an A2D model (80 classes)"."""
    if task == OTHER:
        return f"a {num_classes}-class model of no known task"
    count = f" ({num_classes} class{'' if num_classes == 1 else 'es'})" if num_classes is not None else ""
    classes = {"avos": " (binary masks)", "avs": " (MED-VT++, frames and audio)"}.get(task, count)
    return f"{article(task)} {TASKS[task].name} model{classes}"


def check_task(ckpt: dict, task: str, source: str, script: str, classes_given: bool | None = None,
               resolved=None) -> None:
    """Refuse ``ckpt`` (named ``source``, e.g. "--model_path a.pth") unless it holds a model of ``task``,
    the one ``script`` trains or runs, naming what it holds and the script for that. ``classes_given``:
    whether the script's ``--num_classes`` was given (None: it has no such flag); given, a model of no
    known task is taken as one of ``task`` with that many classes. ``resolved``: the config the script
    decided for a file that records none (an authors' release: its preset and saved arguments), read
    in its place."""
    if resolved is not None and not isinstance(ckpt.get("config"), dict):
        ckpt = {**ckpt, "config": resolved.to_dict()}
    found = checkpoint_task(ckpt, source)
    if found is None or found == task or (found == OTHER and classes_given):
        return
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    classes = config.get("num_classes")
    if found != OTHER:
        other = TASKS[found]
        advice = f"run it with {other.train if script == TASKS[task].train else other.infer}"
    elif classes_given is None:
        advice = f"give {article(task)} {TASKS[task].name} checkpoint"
    else:
        advice = f"if it is {article(task)} {TASKS[task].name} model, pass --num_classes {classes}"
    raise UserError(f"{source} holds {describe(found, classes)}, but {script} is for {TASKS[task].name} models; "
                    f"{advice}")
