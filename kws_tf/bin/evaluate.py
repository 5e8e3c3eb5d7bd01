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

The always-on metric of an exported streaming kws file, instead of model dirs:

  kws-evaluate --always_on_model=workdir/export/kws/distill/model_stream_int8.tflite \
      --always_on_set=workdir/always_on

runs the file over the long recordings of a ``kws-make-always-on-set`` set,
detecting keywords as ``kws-infer`` does (``--smooth_seconds``,
``--refractory_seconds``) at every threshold of a sweep, and prints per group
(all, each condition) the false-rejection rate at 0.5, 1 and 5 false alarms
per hour, and the threshold that keeps to ``--target_false_alarms_per_hour``
with its FRR and median detection delay (``kws_tf.evaluation.always_on``).
Writes ``results.json`` and ``det_per_hour.png`` (FRR against false alarms
per hour, a curve per group) to ``--always_on_out_dir``, and the threshold
into the file's model card (``always_on``), where kws-infer finds it.
"""
import os
import sys

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import audio, cli, detection, records
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
flags.DEFINE_string("always_on_model", None, "Always-on metric: a streaming kws file "
                    "(model_stream_<format>.tflite) to evaluate on --always_on_set instead of "
                    "--model_dirs; its card receives the threshold.")
flags.DEFINE_string("always_on_set", None, "Always-on metric: a folder of long recordings "
                    "written by kws-make-always-on-set.")
flags.DEFINE_string("always_on_out_dir", None, "Always-on metric: where results.json and "
                    "det_per_hour.png go; default: <model without .tflite>_always_on/.")
flags.DEFINE_float("target_false_alarms_per_hour", 1.0, "Always-on metric: the threshold "
                   "written into the card is the one with the fewest misses among those with "
                   "at most this many false alarms per hour on the whole set.")
flags.DEFINE_float("smooth_seconds", detection.SMOOTH_SECONDS, "Always-on metric: the "
                   "posteriors are averaged over this many seconds of hops before the threshold.")
flags.DEFINE_float("refractory_seconds", detection.REFRACTORY_SECONDS, "Always-on metric: "
                   "after a detection, no other for this many seconds.")
flags.DEFINE_float("tolerance_seconds", 1.0, "Always-on metric: a detection counts for a "
                   "spoken keyword when it fires between the keyword's start and this many "
                   "seconds after its end.")


def always_on_main() -> int:
  """The always-on metric of --always_on_model (module docstring)."""
  from kws_tf import inference
  from kws_tf.evaluation import always_on, plots
  from kws_tf.export import card as card_lib
  path = FLAGS.always_on_model
  try:
    card = inference.read_card(path)
    always_on.check_streaming(card, path)
    model = inference.StreamingTFLiteModel(path, card["streaming"])
    results = always_on.evaluate(model, card, FLAGS.always_on_set, FLAGS.smooth_seconds,
                                 FLAGS.refractory_seconds, FLAGS.tolerance_seconds,
                                 FLAGS.target_false_alarms_per_hour)
  except (ValueError, FileNotFoundError, audio.AudioError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out_dir = FLAGS.always_on_out_dir or os.path.splitext(path)[0] + "_always_on"
  os.makedirs(out_dir, exist_ok=True)
  results["model"] = os.path.abspath(path)
  results["set"] = os.path.abspath(FLAGS.always_on_set)
  records.write_json(os.path.join(out_dir, "results.json"), results)
  plots.plot_det_per_hour(
      {name: [(p["false_alarms_per_hour"], p["frr"]) for p in group["curve"]]
       for name, group in results["groups"].items()},
      os.path.join(out_dir, "det_per_hour.png"), always_on.RATES,
      title=f"{os.path.basename(path)}: always on")
  card["always_on"] = always_on.card_section(results, FLAGS.always_on_set)
  card_lib.write_card(os.path.splitext(path)[0], card)
  print(always_on.report(results))
  threshold = card["always_on"]["threshold"]
  print(f"results: {out_dir}/results.json, {out_dir}/det_per_hour.png")
  print(f"card: {inference.card_path(path)} always_on.threshold = "
        + ("none (no threshold reaches the target)" if threshold is None else f"{threshold:g}"))
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.always_on_model or FLAGS.always_on_set:
    if not (FLAGS.always_on_model and FLAGS.always_on_set) or FLAGS.model_dirs:
      raise app.UsageError("the always-on metric takes --always_on_model and --always_on_set "
                           "(and no --model_dirs)")
    return always_on_main()
  if not FLAGS.model_dirs or not FLAGS.data_dir:
    raise app.UsageError("--model_dirs and --data_dir are required (or --always_on_model and "
                         "--always_on_set)")
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
