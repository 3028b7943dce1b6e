"""Extract the authors' original MED-VT ``avos/`` package into the git-ignored ``.orig/`` folder.

Why: the GPU suite (``benchmarks/gpu_suite.py``, via ``benchmarks/original.py``) times the
original model next to ours, but the original's code must never be committed. This script puts
``avos/`` of rkyuca/medvt at the given commit under ``<out>/medvt/avos/`` (``git archive``, their
files unmodified) and writes one shim module into ``<out>/shims/``:

* ``distutils`` (with ``distutils.util.strtobool``): ``avos/models/utils.py`` does
  ``import distutils``, a module removed from the standard library in Python 3.12. It is only used
  to parse ``--pretrain_settings``; the stub makes the import succeed.

``benchmarks/original.py`` appends ``<out>/shims`` to the *end* of ``sys.path``, so a real
``distutils`` (from setuptools) wins where one exists. A ``--out`` that already holds files (an
earlier extraction) is refused unless ``--overwrite``, which replaces its ``medvt/`` and ``shims/``.

    python benchmarks/extract_original.py --mirror MIRROR_GIT_DIR [--commit 555a462] [--out .orig]
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from utils.cli import ArgumentParser, UserError, require_folder, run_main
from utils.outputs import check_output_dir

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"

DISTUTILS_STUB = '''"""Stub of the removed stdlib ``distutils`` (written by benchmarks/extract_original.py)."""
from . import util  # noqa: F401
'''

DISTUTILS_UTIL_STUB = '''"""``strtobool`` as the removed stdlib ``distutils.util`` defined it."""


def strtobool(val: str) -> int:
    val = val.lower()
    if val in ("y", "yes", "t", "true", "on", "1"):
        return 1
    if val in ("n", "no", "f", "false", "off", "0"):
        return 0
    raise ValueError(f"invalid truth value {val!r}")
'''


def check_out(out: Path, mirror: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` whose files :func:`extract` would replace (unless ``overwrite``), and one among the
    test fixtures, which the tests compare against."""
    real = Path(os.path.realpath(out))
    if real == FIXTURES or real.is_relative_to(FIXTURES):
        raise UserError(f"--out {out} is inside the repository's tests/fixtures; choose another folder (default .orig)")
    check_output_dir(out, "--out", {"--mirror": mirror}, overwrite, deletes=True)


def extract(mirror: Path, commit: str, out: Path) -> Path:
    """Write ``out/medvt/avos`` and ``out/shims``; return ``out``. A bad mirror or commit is a UserError."""
    require_folder(mirror, "--mirror", "give the git folder of a rkyuca/medvt mirror")
    probe = subprocess.run(["git", "-C", str(mirror), "cat-file", "-e", f"{commit}^{{tree}}:avos"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise UserError(f"--mirror {mirror} has no avos/ at --commit {commit} (is it a git folder of rkyuca/medvt, "
                        "fetched with that commit?)")
    archive = subprocess.run(["git", "-C", str(mirror), "archive", "--format=tar", commit, "avos"],
                             capture_output=True)
    if archive.returncode:
        last = (archive.stderr.decode(errors="replace").strip().splitlines() or ["no error output"])[-1]
        raise UserError(f"--mirror {mirror}: git archive of --commit {commit} failed: {last}")
    archive = archive.stdout
    dest = out / "medvt"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    shims = out / "shims" / "distutils"
    shutil.rmtree(shims, ignore_errors=True)
    shims.mkdir(parents=True)
    (shims / "__init__.py").write_text(DISTUTILS_STUB)
    (shims / "util.py").write_text(DISTUTILS_UTIL_STUB)
    (out / "COMMIT").write_text(commit + "\n")
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mirror", type=Path, required=True, help="git dir of a rkyuca/medvt mirror")
    p.add_argument("--commit", default="555a462", help="commit to extract (default: the CVPR'23 code)")
    p.add_argument("--out", type=Path, default=Path(".orig"),
                   help="output folder (git-ignored): new or empty (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="extract into an --out that already holds files, replacing its medvt/ and shims/")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    check_out(args.out, args.mirror, args.overwrite)
    out = extract(args.mirror, args.commit, args.out)
    print(f"extracted avos/ of {args.commit} into {out / 'medvt'}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
