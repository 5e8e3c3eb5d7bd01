r"""Keyword spotting off the training distribution: exported models on a robustness set.

  .venv/bin/python benchmarks/robustness.py --models='workdir/export/kws/*/model_*.tflite'

Not a test. Makes (once, then reuses) a robustness set with
``data_prep.robustness_set`` in ``--set_dir``: espeak-ng voices, speaking rates
and sentences that no training run uses, each 1 s window under one condition
(clean, hum / babble / fan noise at 5-25 dB SNR, reverberation, both, a
telephone channel, a level change), keyword windows centred and moved by up to
+-300 ms, as many keyword-free windows. Every model file runs as shipped (raw
audio in, its model card beside it); the tables give per model the accuracy,
keyword recall and false-accept rate on the whole set and per group, and the
keyword recall at 5 % false accepts of a threshold on the keyword score
(``kws_tf.evaluation.robustness``); ``--out`` writes the same as JSON and
``--det_plot`` every model's DET curve on the whole set as one PNG. With
``--ensemble``, the mean of all the files' class probabilities is scored too,
as one more model (an ensemble teacher, as ``kws-create-guidance --ensemble``
distils it). All of it is synthetic speech.
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import glob
import json
import os
import subprocess
import sys
from typing import Dict, List

import numpy as np

from absl import app, flags

from kws_tf import inference, text
from kws_tf.evaluation import metrics, plots, robustness
from kws_tf.export import metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["workdir/export/kws/*/model_*.tflite"], "Exported kws model "
                  "files (globs), each with its model card beside it; MediaPipe variants "
                  "(*_mediapipe.tflite, the same graphs as their files) are left out.")
flags.DEFINE_string("set_dir", "workdir/robustness_benchmark", "The robustness set (made "
                    "here when missing).")
flags.DEFINE_integer("speakers", 12, "Held-out synthetic speakers of the set.")
flags.DEFINE_integer("utterances_per_speaker", 30, "Utterances per speaker.")
flags.DEFINE_integer("seed", 0, "Seed of the set.")
flags.DEFINE_string("out", None, "Write every model's metrics here as JSON.")
flags.DEFINE_string("det_plot", None, "Write the models' DET curves on the whole set here (PNG).")
flags.DEFINE_boolean("ensemble", False, "Also score the mean of all the files' class "
                     "probabilities (an ensemble) as one more model.")

SUMMARY_GROUPS = ("all", "clean", "centred", "offset")


def make_set() -> None:
  subprocess.run([sys.executable, "-m", "data_prep.robustness_set", f"--out_dir={FLAGS.set_dir}",
                  f"--speakers={FLAGS.speakers}",
                  f"--utterances_per_speaker={FLAGS.utterances_per_speaker}",
                  f"--seed={FLAGS.seed}"], cwd=REPO, check=True)


def table(results: Dict[str, Dict[str, Dict[str, float]]], groups: List[str],
          metrics=("accuracy", "keyword_recall", "false_accepts", "recall_at_5pct_fa")) -> str:
  short = {"accuracy": "acc", "keyword_recall": "recall", "false_accepts": "FA",
           "recall_at_5pct_fa": "recall@5%FA"}
  header = ["model"] + [f"{g} {short[m]}" for g in groups for m in metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, groups_metrics in results.items():
    cells = [name]
    for g in groups:
      for m in metrics:
        value = groups_metrics.get(g, {}).get(m)
        cells.append("-" if value is None or value != value else f"{value:.3f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  paths = sorted({p for pattern in FLAGS.models for p in glob.glob(pattern)
                  if p.endswith(".tflite")
                  and not p.endswith(metadata.MEDIAPIPE_SUFFIX + ".tflite")})
  if not paths:
    raise app.UsageError(f"no .tflite file matches --models={','.join(FLAGS.models)}")
  if not os.path.exists(os.path.join(FLAGS.set_dir, robustness.MANIFEST)):
    make_set()
  results, curves, all_scores = {}, {}, {}
  classes = text.keyword_classes()
  for path in paths:
    name = os.path.relpath(path)
    print(f"scoring {name}", flush=True)
    rows, all_scores[name] = robustness.window_scores(
        inference.load_model(path, num_threads=1), inference.read_card(path), FLAGS.set_dir)
  if FLAGS.ensemble:
    if len(paths) < 2:
      raise app.UsageError("--ensemble needs at least two --models files")
    all_scores[f"ensemble of {len(paths)}: mean probabilities"] = np.mean(
        list(all_scores.values()), axis=0)
  for name, scores in all_scores.items():
    results[name] = robustness.score(rows, robustness.predict(scores, classes), scores)
    curves[name] = [(far, frr) for _, far, frr in metrics.det_curve(
        scores, [classes.index(r["label"]) for r in rows], classes.index(text.NEGATIVE_LABEL))]
  windows = results[name]["all"]["windows"]
  print(f"\nRobustness set {FLAGS.set_dir} ({windows} windows, synthetic speech):\n")
  print(table(results, list(SUMMARY_GROUPS)))
  conditions = sorted(g for g in results[name] if g.startswith(("condition=", "snr=")))
  print("\nKeyword recall / false accepts per condition:\n")
  print(table(results, conditions, metrics=("keyword_recall", "false_accepts")))
  if FLAGS.det_plot:
    plots.plot_det_curve(curves, FLAGS.det_plot,
                         title=f"{os.path.basename(os.path.normpath(FLAGS.set_dir))}: all windows")
    print(f"\nDET curves: {FLAGS.det_plot}")
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1, sort_keys=True)


if __name__ == "__main__":
  app.run(main)
