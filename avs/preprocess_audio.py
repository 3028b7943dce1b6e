"""Turn AVSBench wavs into the log-mel pickles the loaders read (the original's preprocessing step).

For every clip of the metadata CSV (all splits, or ``--splits``): ``audio_wav/…/<name>.wav`` (16 kHz
mono 16-bit PCM, as AVSBench ships them) → VGGish log-mel examples (``datasets.audio``, no download,
no resampy/soundfile) → one 0.96 s example per video frame, the last repeated when the clip is
shorter, → ``audio_log_mel/…/<name>.pkl`` (a pickled float tensor [5, 1, 96, 64], AVSBench's
format). Clips whose audio is missing, silent, longer than 5 examples or not 16 kHz are reported
and skipped (``--allow_resample`` / ``--allow_silent`` keep the last two), as the original skips
the videos its try-block rejects. Existing pickles are kept unless ``--overwrite``.

Example::

    python avs/preprocess_audio.py --task s4 --avsbench_root /data/AVSBench
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import json
import pickle
import sys

from datasets.audio import AudioError, wav_to_clip_examples
from datasets.avsbench import NUM_FRAMES, avsbench_clips
from datasets.path_config import add_path_args
from utils.cli import ArgumentParser, add_debug_flag, run_main
from utils.logger import progress
from utils.outputs import write_whole


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--task", choices=("s4", "ms3"), default="s4", help="AVSBench setting")
    add_path_args(p, ["avsbench"])
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits to process")
    p.add_argument("--overwrite", action="store_true", help="recompute pickles that already exist")
    p.add_argument("--allow_resample", action="store_true", help="resample non-16 kHz wavs instead of skipping them")
    p.add_argument("--allow_silent", action="store_true", help="keep all-zero wavs instead of skipping them")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    done, kept, failed = 0, 0, {}
    for split in args.splits:
        clips = avsbench_clips(args.avsbench_root, args.task, split)
        for clip in progress(clips, desc=f"{args.task} {split}", leave=True):
            if clip.log_mel.is_file() and not args.overwrite:
                kept += 1
                continue
            try:
                lm = wav_to_clip_examples(clip.wav, NUM_FRAMES, args.allow_resample, args.allow_silent)
            except AudioError as e:
                failed[clip.name] = str(e)
                continue
            clip.log_mel.parent.mkdir(parents=True, exist_ok=True)
            write_whole(clip.log_mel, pickle.dumps(lm))  # a file cut short by a stop would be kept as done
            done += 1
    for name, why in failed.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    res = {"written": done, "kept": kept, "skipped": failed}
    print(json.dumps({"written": done, "kept": kept, "skipped": len(failed)}))
    return res


if __name__ == "__main__":
    run_main(main)
