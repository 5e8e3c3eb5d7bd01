r"""Word times from a trained CTC model: Viterbi forced alignment of each transcript -> CTM.

  python -m data_prep.align --model_dir=workdir/models/teacher_ctc \
      --data_dir=workdir/records/ctc --splits=train,test

For every utterance of the ctc records (``data_prep.create_tfrecords
--task=ctc``), the model's frame log-probabilities and the record's
character labels give the best CTC path that spells the transcript
(``kws_tf.evaluation.decoding.forced_align``); a word runs from the first
frame of its first character to the end of the last frame of its last
character (``decoding.word_times``), clipped to the time of the utterance's
last input frame, ``(num_frames - 1) * hop``, which lies inside the audio for
every front end (centred STFT frames overhang the audio by up to half a
window). Words are the normalised transcript's words, in order.

Outputs, for each split (``--out`` may contain ``{split}``; without it every
split goes into one file):

  <out>                  CTM lines ``<utt> 1 <start> <duration> <word>``,
                         seconds with 3 decimals, utterances in record order
  <out stem>.skipped.jsonl  one JSON object per utterance left out:
                         ``{"id", "split", "reason"}``; reasons are
                         characters not in the model's vocabulary, an empty
                         transcript, or a transcript that cannot fit in the
                         model's frames (forced_align's ValueError)

The default ``--out`` is ``<data_dir>/alignments/{split}.ctm``. Files are
written under a temporary name and renamed. The CTM is what
``create_tfrecords --task=kws --alignments=<ctm>`` takes, so a corpus
without word times (VIVOS) becomes keyword clips: convert it with
``--task=ctc``, train a CTC teacher, align, convert again with ``--task=kws``.

The time of a logit frame is the model's ``ModelSpec.output_frame_seconds``:
the feature hop (``feature_params``: ``frame_step / sample_rate``, or one
sample for raw audio) times the ctc logits' time stride. Frame ``t`` covers
``[t, t + 1) * frame_seconds`` (``decoding``'s convention). With centred STFT
features and the centred convolutions of the project's models, frame ``t`` is
centred on ``t * frame_seconds``: by this convention every time is half a
frame (10 ms) later than the frame it comes from; it is not corrected here.

``--reference=<ctm globs>`` compares the word times with reference ones
(utterances whose words agree) and prints the median, mean and 90th
percentile absolute error of word starts, word ends and both, in ms, and
their signed mean (hypothesis - reference: a systematic offset).

Errors (bad model dir, records of another format, ...) print ``error: ...``
and exit 2; a run that aligns nothing exits 1.
"""
import collections
import os
import sys

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import cli

from data_prep.alignment import align_records, reference_report, skipped_file, write_outputs

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A ctc model dir written by kws-train.")
flags.DEFINE_string("data_dir", None, "ctc records (create_tfrecords --task=ctc) holding "
                    "the model's feature format.")
flags.DEFINE_list("splits", [], "Splits to align (default: every split of the records).")
flags.DEFINE_string("out", None, "Output CTM path; '{split}' in it is replaced by the split "
                    "name. Default: <data_dir>/alignments/{split}.ctm.")
flags.DEFINE_integer("batch_size", 16, "Utterances per model call.")
flags.DEFINE_string("checkpoint", "best", "Model weights: best, last or a checkpoint path.")
flags.DEFINE_list("reference", [], "Reference CTM files or globs: print the word-boundary "
                  "errors of the alignment against them.")

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("model_dir", "data_dir"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  if FLAGS.batch_size < 1:
    raise app.UsageError("--batch_size must be at least 1")
  out = FLAGS.out or os.path.join(FLAGS.data_dir, "alignments", "{split}.ctm")
  try:
    results = align_records(FLAGS.model_dir, FLAGS.data_dir, FLAGS.splits, FLAGS.batch_size,
                            FLAGS.checkpoint)
    paths = write_outputs(results, out)
    report = reference_report(paths, FLAGS.reference) if FLAGS.reference else None
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  aligned = sum(len(r.words) for r in results.values())
  skipped = [entry for r in results.values() for entry in r.skipped]
  print(f"aligned {aligned} utterances, skipped {len(skipped)}")
  reasons = collections.Counter(entry["reason"].split(":")[0] for entry in skipped)
  for reason, count in reasons.most_common():
    print(f"  skipped: {reason} x{count}")
  for path, splits in paths.items():
    print(f"  {','.join(splits)}: {path} (skipped: {skipped_file(path)})")
  if report:
    print(report)
  if not aligned:
    print("error: no utterance was aligned", file=sys.stderr)
    return 1
  return 0


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
