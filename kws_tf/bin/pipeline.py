r"""The main job, end to end: synthetic corpus -> TFRecords -> teacher -> guidance ->
standard, distilled and quantized-distilled students -> evaluation -> int8 TFLite -> table.

  kws-pipeline --workdir=workdir

Every stage is a separate program (its command is printed) and is skipped when
its outputs are complete, so re-running the command after a kill finishes the
job. The teacher is built on the frozen Whisper-base encoder when
``<workdir>/models/whisper-base`` exists (``kws-get-whisper-base`` makes it) or
on ``--teacher=<Whisper checkpoint dir>`` (PhoWhisper, Hugging Face or
CTranslate2 layout); otherwise it is trained from scratch. See
``kws_tf/pipeline.py`` for the stages and folders.
"""
import os
import sys

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import cli

from kws_tf import pipeline

_DEFAULTS = pipeline.Options()
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", _DEFAULTS.workdir, "Where every stage writes.")
flags.DEFINE_integer("speakers", _DEFAULTS.speakers, "Synthetic speakers in all.")
flags.DEFINE_integer("test_speakers", _DEFAULTS.test_speakers,
                     "Of which held out for the test split.")
flags.DEFINE_integer("utterances_per_speaker", _DEFAULTS.utterances_per_speaker,
                     "Utterances per synthetic speaker.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the synthetic corpus.")
flags.DEFINE_integer("cores", _DEFAULTS.cores, "Worker processes of the data stages.")
flags.DEFINE_list("tasks", list(_DEFAULTS.tasks), "kws and/or ctc.")
flags.DEFINE_string("teacher", _DEFAULTS.teacher, "auto (<workdir>/models/whisper-base when "
                    "present, else from scratch), scratch, or a Whisper checkpoint directory "
                    "(Hugging Face PhoWhisper or CTranslate2) whose frozen encoder the teacher "
                    "uses.")
flags.DEFINE_integer("teacher_steps", _DEFAULTS.teacher_steps, "Training steps of the teacher.")
flags.DEFINE_integer("student_steps", _DEFAULTS.student_steps,
                     "Training steps of each student.")
flags.DEFINE_integer("quantize_bits", _DEFAULTS.quantize_bits,
                     "Bits per weight of the quantized-distilled student.")
flags.DEFINE_integer("num_parity", _DEFAULTS.num_parity,
                     "Test clips of each export's Keras-vs-TFLite parity check.")
flags.DEFINE_enum("voices", _DEFAULTS.voices, ["demo", "varied"], "Voices of the corpus "
                  "(kws-synthesize-corpus --voices).")
flags.DEFINE_enum("texts", _DEFAULTS.texts, ["lexicon", "gettext_train", "mixed"],
                  "Sentences of the corpus (kws-synthesize-corpus --texts).")
flags.DEFINE_bool("augment", _DEFAULTS.augment, "kws: train on waveforms augmented on the "
                  "fly and distil from the teacher's logits for the same views.")
flags.DEFINE_integer("views", _DEFAULTS.views, "kws with --augment: augmented views per clip "
                     "in the teacher's guidance.")
flags.DEFINE_integer("robustness_speakers", _DEFAULTS.robustness_speakers,
                     "Held-out speakers of the kws robustness set.")
flags.DEFINE_integer("robustness_utterances", _DEFAULTS.robustness_utterances,
                     "Utterances per speaker of the kws robustness set.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = pipeline.Options(
      workdir=FLAGS.workdir, speakers=FLAGS.speakers, test_speakers=FLAGS.test_speakers,
      utterances_per_speaker=FLAGS.utterances_per_speaker, seed=FLAGS.seed, cores=FLAGS.cores,
      tasks=tuple(FLAGS.tasks), teacher=FLAGS.teacher, teacher_steps=FLAGS.teacher_steps,
      student_steps=FLAGS.student_steps, quantize_bits=FLAGS.quantize_bits,
      num_parity=FLAGS.num_parity, robustness_speakers=FLAGS.robustness_speakers,
      robustness_utterances=FLAGS.robustness_utterances, voices=FLAGS.voices, texts=FLAGS.texts,
      augment=FLAGS.augment, views=FLAGS.views)
  try:
    pipeline.run(options)
  except pipeline.PipelineError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"summary: {os.path.join(FLAGS.workdir, 'results.md')}")
  return 0


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
