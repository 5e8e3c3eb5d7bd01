r"""Benchmark of CTC forced alignment (data_prep.align) against true word times; prints a table.

  .venv/bin/python benchmarks/align.py --work_dir=/tmp/kws_tf_align_bench [--student]

Not a test. The issue's bound: with a CTC teacher trained on the synthetic
corpus, the median word-boundary error is at most 40 ms. Stages, each skipped
when its output is already in ``--work_dir`` (so a killed run is finished by
the same command, and a finished one only re-aligns):

1. ``data_prep.synthesize_corpus``: ``--speakers`` espeak-ng voices
   (``--test_speakers`` of them the test split) x ``--utterances`` sentences,
   with the true word times of espeak's word events (``<split>/alignments.ctm``);
2. ``data_prep.create_tfrecords --task=ctc --formats=logmel,mfcc``;
3. ``kws_tf.bin.train``: the CTC teacher (``configs/teacher_ctc.yaml``: a
   from-scratch Whisper encoder on log-mel, 20 ms logit frames) for
   ``--teacher_steps``; with ``--student`` also a small wav2letter CTC model
   on MFCC (``STUDENT``: 4 x 128, 256 filters, widths 11, 7, 7, 7, 1, stride
   2 first, 0.46 M parameters; trained with CTC only, no distillation);
4. ``data_prep.align`` of the test and train splits with each model, compared
   with the true CTM (``data_prep.alignment.boundary_errors``).

A word's start is the first frame of its first character's span, its end the
end of the last frame of its last character's span (``decoding.word_times``);
nothing is shifted. The table gives, per model and split, the median, mean
and 90th percentile absolute error of word starts and ends together (and
separately), the signed mean (hypothesis - truth: a systematic offset, left
in), and the model's test CER (greedy, from its ``results.json``). Every
command is printed before it runs; its output goes to ``<work_dir>/logs``.
Synthetic speech: espeak's Vietnamese is far from natural speech. Results:
benchmarks/README.md, CTC forced alignment.
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import json
import os
import shlex
import subprocess
import sys
import time
from typing import List, Optional

from absl import app, flags

from data_prep import alignment, corpora

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/kws_tf_align_bench", "Corpus, records, models, CTMs.")
flags.DEFINE_integer("speakers", 20, "Synthetic speakers, train and test together.")
flags.DEFINE_integer("test_speakers", 4, "Of which test speakers.")
flags.DEFINE_integer("utterances", 50, "Utterances per speaker.")
flags.DEFINE_integer("seed", 1, "Seed of the synthetic corpus.")
flags.DEFINE_integer("teacher_steps", 1500, "Train steps of the CTC teacher.")
flags.DEFINE_float("teacher_learning_rate", 1e-3, "Peak learning rate of the teacher.")
flags.DEFINE_bool("student", False, "Also train and align a wav2letter CTC student on MFCC.")
flags.DEFINE_integer("student_steps", 3000, "Train steps of the student.")
flags.DEFINE_integer("cores", 2, "Worker processes of the corpus stages.")

# The wav2letter CTC student of --student (overrides of the default recipe).
STUDENT = ["task=ctc", "model.name=wav2letter", "model.params.filters=[128,128,128,128,256]",
           "model.params.widths=[11,7,7,7,1]", "model.params.strides=[2,1,1,1,1]",
           "model.params.dropouts=[0.1,0.1,0.1,0.1,0.1]", "data.format=mfcc",
           "data.batch_size=16", "train.eval_every=500", "train.checkpoint_every=500"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUND_MS = 40.0
SPLITS = ("test", "train")


def run_stage(name: str, args: List[str], done: Optional[str]) -> None:
  """Runs ``python -m args`` unless the file ``done`` exists; prints the command and its time."""
  command = [sys.executable, "-m", *args]
  print("$ " + shlex.join(command), flush=True)
  if done and os.path.exists(done):
    print(f"  skipped: {done} exists", flush=True)
    return
  log = os.path.join(FLAGS.work_dir, "logs", f"{name}.log")
  os.makedirs(os.path.dirname(log), exist_ok=True)
  start = time.perf_counter()
  with open(log, "w", encoding="utf-8") as f:
    code = subprocess.call(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  if code != 0:
    raise SystemExit(f"error: {name} failed with exit code {code}; see {log}")
  print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)


def train_args(name: str) -> List[str]:
  """Arguments of ``kws_tf.bin.train`` for the teacher or the student."""
  records = os.path.join(FLAGS.work_dir, "records")
  model_dir = os.path.join(FLAGS.work_dir, "models", name)
  if name == "teacher":
    recipe = ["--config=configs/teacher_ctc.yaml",
              f"--override=train.steps={FLAGS.teacher_steps}",
              f"--override=optimizer.learning_rate={FLAGS.teacher_learning_rate}"]
  else:
    recipe = [f"--override={o}" for o in STUDENT + [f"train.steps={FLAGS.student_steps}"]]
  return ["kws_tf.bin.train", *recipe, f"--data_dir={records}", f"--model_dir={model_dir}"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  work = FLAGS.work_dir
  corpus, records = os.path.join(work, "corpus"), os.path.join(work, "records")
  started = time.perf_counter()
  run_stage("synthesize", ["data_prep.synthesize_corpus", f"--out_dir={corpus}",
                           f"--speakers={FLAGS.speakers}", f"--test_speakers={FLAGS.test_speakers}",
                           f"--utterances_per_speaker={FLAGS.utterances}", f"--seed={FLAGS.seed}",
                           f"--cores={FLAGS.cores}"],
            os.path.join(corpus, "test", "alignments.ctm"))
  run_stage("records", ["data_prep.create_tfrecords", f"--data_dir={corpus}", "--corpus=vivos",
                        f"--out_dir={records}", "--splits=train,test", "--formats=logmel,mfcc",
                        "--task=ctc", f"--cores={FLAGS.cores}"],
            os.path.join(records, "metadata.json"))
  models = ["teacher"] + (["student"] if FLAGS.student else [])
  truth = corpora.read_ctm([os.path.join(corpus, "*", "alignments.ctm")])
  rows = []
  for name in models:
    model_dir = os.path.join(work, "models", name)
    run_stage(f"train_{name}", train_args(name), os.path.join(model_dir, "results.json"))
    with open(os.path.join(model_dir, "results.json"), encoding="utf-8") as f:
      results = json.load(f)
    out = os.path.join(model_dir, "alignments", "{split}.ctm")
    run_stage(f"align_{name}", ["data_prep.align", f"--model_dir={model_dir}",
                                f"--data_dir={records}", f"--splits={','.join(SPLITS)}",
                                f"--out={out}"], None)
    for split in SPLITS:
      hypothesis = corpora.read_ctm([out.replace("{split}", split)])
      errors = alignment.boundary_errors(hypothesis, truth)
      rows.append((name, results, split, errors, alignment.error_table(errors)))
  print_table(rows)
  teacher_test = next(table for name, _, split, _, table in rows
                      if name == "teacher" and split == "test")
  median = teacher_test["both"]["median"]
  verdict = "met" if median <= BOUND_MS else "missed"
  print(f"\nteacher, test split: median word-boundary error {median:.1f} ms "
        f"(bound <= {BOUND_MS:.0f} ms: {verdict}); whole run {time.perf_counter() - started:.0f} s")


def print_table(rows) -> None:
  """The markdown table of every (model, split)."""
  print("\n| model | test CER | split | utts aligned | words | median ms | mean ms | p90 ms "
        "| start median / signed mean ms | end median / signed mean ms |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name, results, split, errors, table in rows:
    both, start, end = table["both"], table["start"], table["end"]
    print(f"| {name} ({results['model']}, {results['steps']} steps) | "
          f"{results['test']['cer']:.3f} | {split} | {errors.utterances} | {errors.start.size} | "
          f"**{both['median']:.1f}** | {both['mean']:.1f} | {both['p90']:.1f} | "
          f"{start['median']:.1f} / {start['signed_mean']:+.1f} | "
          f"{end['median']:.1f} / {end['signed_mean']:+.1f} |")


if __name__ == "__main__":
  app.run(main)
