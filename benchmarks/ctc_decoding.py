r"""CTC decoders side by side: greedy, beam search, and beam search with a word language model.

  .venv/bin/python benchmarks/ctc_decoding.py --model_dir=workdir/models/ctc_small \
      --data_dir=workdir/records/ctc --split=test
  .venv/bin/python benchmarks/ctc_decoding.py --model=workdir/export/ctc_small/model_int8.tflite \
      --data_dir=workdir/records/ctc --split=test

Not a test. Runs the model once over a split of ctc records (a trained model
dir on its own feature format, as ``kws-evaluate`` does; or an exported file on
the records' ``raw`` audio, as ``kws-infer`` does) and decodes the logits with
each decoder of ``kws_tf.evaluation.decoding``: greedy; beam (TensorFlow's
prefix beam search); beam_lm with no LM weight and no word bonus (this
project's prefix beam search alone); beam_lm with the word language model of
``--lm`` for every ``--lm_weights`` x ``--word_bonuses``. Prints one Markdown
row per decoder: CER, WER and decoding milliseconds per utterance. When the
``--lm`` file is missing, ``kws-build-lm`` makes it from its default text
(Debian's Vietnamese documentation, which no corpus reads).
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from kws_tf.evaluation import ctc_logits, decoding, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A trained ctc model dir (kws-train).")
flags.DEFINE_string("model", None, "Or an exported ctc .tflite file or SavedModel folder, "
                    "with its model card beside it (reads the records' raw audio).")
flags.DEFINE_string("data_dir", None, "ctc records (kws-create-tfrecords --task=ctc).")
flags.DEFINE_string("split", "test", "Split to decode.")
flags.DEFINE_string("lm", "workdir/lm/vietnamese_3gram.arpa", "The word language model (ARPA "
                    "or KenLM binary); made with kws-build-lm when missing.")
flags.DEFINE_integer("beam_width", 8, "Prefixes the beam decoders keep.")
flags.DEFINE_list("lm_weights", ["0.25", "0.5", "1.0"], "beam_lm: LM weights to try.")
flags.DEFINE_list("word_bonuses", ["0", "1", "2"], "beam_lm: word bonuses (nats) to try.")
flags.DEFINE_integer("limit", 0, "Decode at most this many utterances (0: all).")
flags.DEFINE_integer("batch_size", 16, "--model_dir: examples per batch.")
flags.mark_flags_as_required(["data_dir"])


def make_lm() -> None:
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.lm)), exist_ok=True)
  subprocess.run([sys.executable, "-m", "data_prep.build_lm", f"--output={FLAGS.lm}"],
                 cwd=REPO, check=True)


def main(argv):
  del argv
  if (FLAGS.model_dir is None) == (FLAGS.model is None):
    raise app.UsageError("give one of --model_dir and --model")
  if not os.path.exists(FLAGS.lm):
    make_lm()
  lm = decoding.LanguageModel(FLAGS.lm)
  try:
    logits, labels, vocabulary = (
        ctc_logits.model_dir_logits(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.limit,
                                    FLAGS.batch_size) if FLAGS.model_dir else
        ctc_logits.exported_logits(FLAGS.model, FLAGS.data_dir, FLAGS.split, FLAGS.limit))
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  references = [vocabulary.decode(ids) for ids in labels]
  width = FLAGS.beam_width
  decoders = [("greedy", "", decoding.CtcDecoder("greedy")),
              ("beam (TensorFlow)", f"width {width}", decoding.CtcDecoder("beam", width)),
              ("beam_lm, no LM", f"width {width}",
               decoding.CtcDecoder("beam_lm", width, None, 0.0, 0.0))]
  for weight in FLAGS.lm_weights:
    for bonus in FLAGS.word_bonuses:
      decoders.append(("beam_lm", f"width {width}, lm_weight {weight}, word_bonus {bonus}",
                       decoding.CtcDecoder("beam_lm", width, lm, float(weight), float(bonus))))
  print(f"\n{len(references)} utterances of {FLAGS.data_dir} ({FLAGS.split}), "
        f"model {FLAGS.model_dir or FLAGS.model}, LM {FLAGS.lm} (order {lm.order})\n")
  print("| decoder | settings | CER | WER | ms / utterance |")
  print("|---|---|---|---|---|")
  for name, settings, decoder in decoders:
    start = time.perf_counter()
    hypotheses = [vocabulary.decode(decoder.decode(row[np.newaxis], [len(row)], vocabulary)[0])
                  for row in logits]
    milliseconds = (time.perf_counter() - start) * 1000.0 / max(1, len(logits))
    rates = metrics.error_rates(references, hypotheses)
    print(f"| {name} | {settings} | {rates['cer']:.4f} | {rates['wer']:.4f} | "
          f"{milliseconds:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
