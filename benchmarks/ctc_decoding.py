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
from typing import List, Tuple

import numpy as np
from absl import app, flags

from kws_tf import data, inference, records, text
from kws_tf import model_dir as model_dir_lib
from kws_tf.evaluation import decoding, metrics, runner

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


def model_dir_logits() -> Tuple[List[np.ndarray], List[List[int]], text.Vocabulary]:
  """Logits ``[frames, V]`` and label ids of every utterance, through the Keras model."""
  spec, metadata, parse = model_dir_lib.model_records(FLAGS.model_dir, FLAGS.data_dir)
  if spec.task != "ctc":
    raise app.UsageError(f"{FLAGS.model_dir} is a {spec.task} model, not ctc")
  model = model_dir_lib.load_trained_model(FLAGS.model_dir)
  paths = data.shard_paths(FLAGS.data_dir, spec.format, FLAGS.split, metadata)
  dataset = data.records_dataset(paths, metadata.compression).map(parse)
  if FLAGS.limit:
    dataset = dataset.take(FLAGS.limit)
  predictions = runner.predict(model, dataset.padded_batch(FLAGS.batch_size), "ctc")
  return (predictions["logits"], predictions["labels"],
          text.Vocabulary(spec.vocabulary["symbols"]))


def exported_logits() -> Tuple[List[np.ndarray], List[List[int]], text.Vocabulary]:
  """Logits and label ids of every utterance, the raw audio through the exported file."""
  card = inference.read_card(FLAGS.model)
  if card["task"] != "ctc":
    raise app.UsageError(f"{FLAGS.model} is a {card['task']} model, not ctc")
  model = inference.load_model(FLAGS.model)
  metadata = records.load_metadata(FLAGS.data_dir)
  parse = data.make_parser(metadata, "raw", normalize=False)
  paths = data.shard_paths(FLAGS.data_dir, "raw", FLAGS.split, metadata)
  dataset = data.records_dataset(paths, metadata.compression).map(parse)
  if FLAGS.limit:
    dataset = dataset.take(FLAGS.limit)
  logits, labels = [], []
  for example in dataset:
    outputs = model(example["features"].numpy().reshape(-1))
    logits.append(outputs["logits"][0][:int(outputs["logit_frames"][0])])
    labels.append(example["labels"].numpy().tolist())
  if metadata.vocabulary["symbols"] != card["labels"]["vocabulary"]:
    raise app.UsageError(f"{FLAGS.model} and {FLAGS.data_dir} have different vocabularies")
  return logits, labels, text.Vocabulary(card["labels"]["vocabulary"])


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
  logits, labels, vocabulary = model_dir_logits() if FLAGS.model_dir else exported_logits()
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
