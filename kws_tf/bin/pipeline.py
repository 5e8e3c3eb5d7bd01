r"""The main job on the embedded default: synthetic corpus -> TFRecords.

  kws-pipeline --workdir=workdir

Stages run as separate programs that read what the previous one wrote from
disk; each is resumable, so re-running the command after a kill finishes the
job and skips what is complete:

  1. corpus   data_prep.synthesize_corpus  -> <workdir>/corpus (VIVOS layout + CTM)
  2. records  data_prep.create_tfrecords   -> <workdir>/records/{kws,ctc}
              (logmel for the teacher, mfcc for the students)
"""
import os
import shlex
import subprocess
import sys
import time

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdir", "Where every stage writes.")
flags.DEFINE_integer("speakers", 16, "Synthetic speakers in all.")
flags.DEFINE_integer("test_speakers", 4, "Of which held out for the test split.")
flags.DEFINE_integer("utterances_per_speaker", 60, "Utterances per synthetic speaker.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic corpus.")
flags.DEFINE_integer("cores", os.cpu_count(), "Worker processes per stage.")
flags.DEFINE_list("formats", ["logmel", "mfcc"], "Feature formats to write.")
flags.DEFINE_list("tasks", ["kws", "ctc"], "Record sets to write.")


def _stage(name: str, module: str, args) -> None:
  command = [sys.executable, "-m", module] + args
  print(f"== {name}: {' '.join(shlex.quote(c) for c in command)}", flush=True)
  started = time.time()
  result = subprocess.run(command)
  if result.returncode != 0:
    raise SystemExit(f"stage {name} failed (exit {result.returncode}); fix the cause "
                     f"and run the same command again: finished work is kept")
  print(f"== {name}: done in {time.time() - started:.0f} s", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  corpus = os.path.join(FLAGS.workdir, "corpus")
  _stage("corpus", "data_prep.synthesize_corpus", [
      f"--out_dir={corpus}", f"--speakers={FLAGS.speakers}",
      f"--test_speakers={FLAGS.test_speakers}",
      f"--utterances_per_speaker={FLAGS.utterances_per_speaker}",
      f"--seed={FLAGS.seed}", f"--cores={FLAGS.cores}"])
  for task in FLAGS.tasks:
    args = [f"--data_dir={corpus}", "--corpus=vivos",
            f"--out_dir={os.path.join(FLAGS.workdir, 'records', task)}",
            "--splits=train,test", f"--formats={','.join(FLAGS.formats)}",
            f"--task={task}", f"--cores={FLAGS.cores}"]
    if task == "kws":
      args.append(f"--alignments={os.path.join(corpus, '*', 'alignments.ctm')}")
    _stage(f"records ({task})", "data_prep.create_tfrecords", args)
  print(f"records ready under {os.path.join(FLAGS.workdir, 'records')}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
