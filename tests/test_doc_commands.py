"""Every command the documentation shows runs the script it names with flags that script takes.

Commands are read from the Markdown files (fenced blocks and inline code spans) and from the scripts'
own docstrings (their ``--help`` examples). A complete command must parse with the script's own
parser (flags, values, choices, required arguments); one shortened with ``...`` or ``[--flag]`` has
each of its flags checked. A renamed flag or script, or a choice that no longer exists, fails here.
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "actor_action/README.md", "avs/README.md", "benchmarks/README.md"]
LAUNCHERS = {"python", "python3", "torchrun"}
# Scripts the documentation must show at least once (each user-facing script of test_scripts_help).
MUST_SHOW = {
    "train_swin_medvt_avos", "inference_swin_medvt_avos", "crf_davis16", "export_onnx", "utils.demo",
    "vss.train_medvt_vss", "vss.inference_medvt_vss", "actor_action.train_medvt_a2d",
    "actor_action.inference_medvt_a2d", "avs.train_medvt", "avs.test_medvt", "avs.preprocess_audio",
    "benchmarks.bench_inference", "benchmarks.bench_train", "benchmarks.compare_masks", "benchmarks.gpu_suite",
}


def doc_lines(text: str) -> list[str]:
    """Shell lines of a Markdown text: fenced blocks (continuations joined) and inline code spans."""
    lines, fenced, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            pending += line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            lines.append(pending)
            pending = ""
        else:
            lines += re.findall(r"`([^`]+)`", line)
    return lines


def docstring_lines(text: str) -> list[str]:
    """The example command lines of a script's docstring (indented ``python …``, continuations joined)."""
    lines, pending = [], None
    for line in text.splitlines():
        if pending is None and line.strip().split(" ", 1)[0] not in LAUNCHERS:
            continue
        pending = (pending or "") + line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        lines.append(pending)
        pending = None
    return lines


def test_docstring_examples_keep_their_line_breaks():
    """A backslash at a line's end in a plain docstring joins the lines in ``--help``: write it doubled."""
    for script in sorted(MUST_SHOW):
        doc = importlib.import_module(script).__doc__ or ""
        assert not re.search(r"\S {5,}--", doc), f"{script}: a command's line break was lost (write \\\\)"


def commands(line: str) -> list[tuple[str, list[str]]]:
    """(module, argv) of each python/torchrun command of a shell line."""
    found = []
    for part in re.split(r"&&|;|\|", line):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:  # prose in a code span, not a command
            continue
        at = next((i for i, w in enumerate(words) if w in LAUNCHERS), None)
        if at is None:
            continue
        words = words[at + 1:]
        if words[:1] == ["-m"]:
            module, argv = words[1], words[2:]
        else:  # torchrun's own options come before the script
            at = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
            if at is None:
                continue
            module, argv = Path(words[at]).with_suffix("").as_posix().replace("/", "."), words[at + 1:]
        found.append((module, argv))
    return found


def documented() -> list[tuple[str, str, list[str]]]:
    """(where, module, argv) of every documented command."""
    out = []
    for doc in DOCS:
        for line in doc_lines((ROOT / doc).read_text()):
            out += [(doc, module, argv) for module, argv in commands(line)]
    for script in sorted({module for _, module, _ in out} | MUST_SHOW):
        path = ROOT / (script.replace(".", "/") + ".py")
        doc = importlib.import_module(script).__doc__ if path.is_file() else None
        for line in docstring_lines(doc or ""):
            out += [(f"{script} docstring", module, argv) for module, argv in commands(line)]
    return out


COMMANDS = documented()


def test_every_user_script_is_shown():
    shown = {module for _, module, _ in COMMANDS}
    assert len(COMMANDS) >= 30, COMMANDS
    assert not MUST_SHOW - shown, f"no documented command runs {sorted(MUST_SHOW - shown)}"


@pytest.mark.parametrize("where,module,argv", COMMANDS, ids=[f"{w}:{m}:{i}" for i, (w, m, _) in enumerate(COMMANDS)])
def test_documented_command_parses(where, module, argv, capsys):
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{where} runs {module}, which is not a script of this repository"
    parser = importlib.import_module(module).get_args_parser()
    shortened = "..." in argv or any(w.startswith("[") for w in argv)
    if not shortened:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `{module} {shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
        return
    flags = [w.strip("[]").split("=")[0] for w in argv if w.strip("[]").startswith("--")]
    unknown = [f for f in flags if f not in parser._option_string_actions]
    assert not unknown, f"{where}: `{module}` takes no {unknown}"


SCRIPTS_WITH_PARSERS = sorted(MUST_SHOW | {"benchmarks.bench_onnx", "benchmarks.bench_video",
                                           "benchmarks.bench_class_ids", "benchmarks.extract_original"})


@pytest.mark.parametrize("script", SCRIPTS_WITH_PARSERS)
def test_help_shows_every_default(script):
    """``--help`` hid defaults a user needs (--output_dir runs/medvt_avos, --val_size 360, --num_workers 4):
    every option that has one says it."""
    parser = importlib.import_module(script).get_args_parser()
    formatter = parser._get_formatter()
    hidden = []
    for action in parser._actions:
        if (not action.option_strings or argparse.SUPPRESS in (action.help, action.default)
                or action.default is None or action.default is False or action.default in ("", [], ())):
            continue
        if not action.help or "default" not in formatter._expand_help(action).lower():
            hidden.append(action.option_strings[-1])
    assert not hidden, f"{script} --help does not show the default of {hidden}"
