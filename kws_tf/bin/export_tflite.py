r"""Exports a trained model as a SavedModel and TFLite files that take raw 16 kHz audio.

  kws-export-tflite --model_dir=workdir/models/kws/distill --data_dir=workdir/records/kws \
      --audio_dir=workdir/corpus --out_dir=workdir/export/kws/distill \
      --formats=float32,float16,dynamic,int8,qat

Writes ``saved_model/`` and ``model_<format>.tflite`` with the feature front end
and the normalisation inside (``model_stream_<format>.tflite``: the same, fed
in hops with its state), each with a model card (``.json`` and ``.md``:
labels, input shape and dtype, parity with the Keras model on test examples,
size, single-thread latency, the command). Exits non-zero when an int8 or qat
file loses more than ``--max_accuracy_drop`` points of accuracy (kws) or CER
(ctc) against the Keras model: that file is kept as
``model_<format>.rejected.tflite``, never under its own name; the other files
are written. See ``kws_tf/export/``.
"""
import shlex
import sys

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A model dir written by kws-train.")
flags.DEFINE_string("data_dir", None, "The create_tfrecords output the model was trained on "
                    "(test examples for the parity check, train examples for calibration).")
flags.DEFINE_string("out_dir", None, "Where the SavedModel, TFLite files and cards go.")
flags.DEFINE_list("formats", ["float32", "int8"],
                  "TFLite formats: float32, float16, dynamic, int8, qat; kws also "
                  "stream_float32, stream_int8 (audio in hops of --stream_hop_seconds, "
                  "posteriors of the last clip every hop).")
flags.DEFINE_float("stream_hop_seconds", 0.1, "Audio per call of the stream_* files: a "
                   "multiple of the front end's hop that divides the clip.")
flags.DEFINE_enum("int8_io", "float", ["float", "int8"],
                  "Input waveform and output dtype of the int8 and qat files.")
flags.DEFINE_integer("num_parity", 100, "Test examples of the Keras-vs-export parity check.")
flags.DEFINE_integer("num_calibration", 100,
                     "Train examples whose waveforms calibrate the int8 and qat files.")
flags.DEFINE_float("max_accuracy_drop", 1.0, "Points (percent) of accuracy (kws) or CER (ctc) "
                   "an int8 / qat file may lose against the Keras model.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which weights to export.")
flags.DEFINE_string("split", "test", "Records split of the parity check.")
flags.DEFINE_string("train_split", "train", "Records split of calibration and QAT.")
flags.DEFINE_string("audio_dir", None, "Corpus root holding <utterance id>.wav|flac files; "
                    "needed when the records hold no 'raw' format (the waveforms of the parity "
                    "check and of calibration are read from it).")
flags.DEFINE_integer("qat_steps", 200, "Quantization-aware fine-tuning steps (qat).")
flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate of the QAT fine-tune.")
flags.DEFINE_integer("qat_batch_size", 32, "Batch size of the QAT fine-tune.")
flags.DEFINE_integer("seed", 0, "Seed of the QAT fine-tune.")
flags.mark_flags_as_required(["model_dir", "data_dir", "out_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from kws_tf.export import tflite
  config = tflite.ExportConfig(
      formats=tuple(FLAGS.formats), int8_io=FLAGS.int8_io == "int8",
      num_parity=FLAGS.num_parity, num_calibration=FLAGS.num_calibration,
      max_accuracy_drop=FLAGS.max_accuracy_drop, checkpoint=FLAGS.checkpoint,
      split=FLAGS.split, train_split=FLAGS.train_split, audio_dir=FLAGS.audio_dir,
      qat_steps=FLAGS.qat_steps, qat_learning_rate=FLAGS.qat_learning_rate,
      qat_batch_size=FLAGS.qat_batch_size, seed=FLAGS.seed,
      stream_hop_seconds=FLAGS.stream_hop_seconds,
      command=" ".join(shlex.quote(a) for a in sys.argv))
  try:
    tflite.export(FLAGS.model_dir, FLAGS.data_dir, FLAGS.out_dir, config,
                  log=lambda line: print(line, flush=True))
  except (tflite.ExportError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
