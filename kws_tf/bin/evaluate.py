r"""Evaluates trained models on one split and prints them side by side.

  kws-evaluate --model_dirs=workdir/models/teacher_kws,workdir/models/student_kws \
      --data_dir=workdir/records/kws --split=test

Each model is rebuilt from its model dir (``model.json``) with its best
weights and run over the split's records in the model's own feature format
(a log-mel teacher and an MFCC student read the same examples). For each
model, ``<model_dir>/eval/<split>/`` receives ``results.json`` and:

  kws  confusion.txt, confusion.png (normalised per true class), det.png
       (false rejects vs false accepts on the negative class); the report
       holds accuracy, macro-F1, keyword recall, false accepts, per-class
       precision / recall / F1 and the false-reject rate at 1% and 5% false
       accepts; and accuracy, keyword recall and false accepts on windows
       moved off the centre by up to --offset_seconds (records with raw clips
       and context, as the pipeline writes them).
  ctc  WER and CER with greedy decoding; with ``--decoder=beam`` (the
       default) also with prefix beam search, and with ``--decoder=beam_lm``
       also with prefix beam search and the word language model of ``--lm``
       (``kws-build-lm`` writes one); a few decoded examples are printed.
"""
import sys

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import cli
from kws_tf.evaluation import decoder_flags

FLAGS = flags.FLAGS
flags.DEFINE_list("model_dirs", None, "Model dirs written by kws-train (comma-separated).")
flags.DEFINE_string("data_dir", None, "A create_tfrecords output of the models' task.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
decoder_flags.define_flags(default_decoder="beam")
flags.adopt_module_key_flags(decoder_flags)
flags.DEFINE_integer("batch_size", 32, "Examples per batch.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which weights to evaluate.")
flags.DEFINE_integer("quantize_bits", 0, "Quantize every weight once to this many bits before "
                     "evaluating (post-training quantization, the baseline of quantized "
                     "distillation); 0: as trained.")
flags.DEFINE_integer("bucket_size", 256, "Weights per quantization bucket (--quantize_bits).")
flags.DEFINE_float("offset_seconds", 0.3, "kws: also score every window moved off its clip's "
                   "centre by a random offset of up to this many seconds (within the offsets "
                   "that keep its label; needs raw records with context); 0: centred only.")
flags.DEFINE_integer("offset_seed", 0, "kws: seed of the --offset_seconds offsets.")
flags.mark_flags_as_required(["model_dirs", "data_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    decoder = decoder_flags.decoder_from_flags()
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from kws_tf.evaluation import report
  all_results = []
  # greedy always; beam search for beam and beam_lm; beam_lm besides.
  beam_width = 0 if decoder.name == "greedy" else decoder.beam_width
  lm_decoder = decoder if decoder.name == "beam_lm" else None
  for model_dir in FLAGS.model_dirs:
    try:
      results = report.evaluate_model(model_dir, FLAGS.data_dir, FLAGS.split,
                                      beam_width, FLAGS.batch_size, FLAGS.checkpoint,
                                      FLAGS.quantize_bits, FLAGS.bucket_size,
                                      FLAGS.offset_seconds, FLAGS.offset_seed, lm_decoder)
    except (ValueError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    all_results.append(results)
    for example in results.get("examples", []):
      print(f"{example['id']}\n  ref:    {example['reference']}\n  greedy: {example['greedy']}"
            + (f"\n  beam:   {example['beam']}" if "beam" in example else "")
            + (f"\n  beam+LM: {example['beam_lm']}" if "beam_lm" in example else ""))
    print(f"results: {results['output_dir']}/results.json")
  print(report.side_by_side(all_results))
  return 0


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
