"""Extract the authors' original MED-VT ``avos/`` package into the git-ignored ``.orig/`` folder.

Why: the GPU suite (``benchmarks/gpu_suite.py``, via ``benchmarks/original.py``) times the
original model next to ours, but the original's code must never be committed. This script puts
``avos/`` of rkyuca/medvt at the given commit under ``<out>/medvt/avos/`` (``git archive``, their
files unmodified) and writes one shim module into ``<out>/shims/``:

* ``distutils`` (with ``distutils.util.strtobool``): ``avos/models/utils.py`` does
  ``import distutils``, a module removed from the standard library in Python 3.12. It is only used
  to parse ``--pretrain_settings``; the stub makes the import succeed.

``benchmarks/original.py`` appends ``<out>/shims`` to the *end* of ``sys.path``, so a real
``distutils`` (from setuptools) wins where one exists. Idempotent: the target folder is replaced
on every run.

    python benchmarks/extract_original.py --mirror MIRROR_GIT_DIR [--commit 555a462] [--out .orig]
"""
from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from utils.cli import ArgumentParser

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


def extract(mirror: Path, commit: str, out: Path) -> Path:
    """Write ``out/medvt/avos`` and ``out/shims``; return ``out``. Raises SystemExit on a bad mirror/commit."""
    probe = subprocess.run(["git", "-C", str(mirror), "cat-file", "-e", f"{commit}^{{tree}}:avos"],
                           capture_output=True, text=True)
    if not mirror.exists() or probe.returncode != 0:
        raise SystemExit(f"extract_original: no avos/ at commit {commit!r} in mirror {str(mirror)!r}")
    archive = subprocess.run(["git", "-C", str(mirror), "archive", "--format=tar", commit, "avos"],
                             capture_output=True, check=True).stdout
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
    p.add_argument("--out", type=Path, default=Path(".orig"), help="output folder (git-ignored)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    out = extract(args.mirror, args.commit, args.out)
    print(f"extracted avos/ of {args.commit} into {out / 'medvt'}", file=sys.stderr)


if __name__ == "__main__":
    main()
