r"""Runs an exported model over audio files: keywords with times, or a transcript.

  kws-infer --model=workdir/export/kws/distill/model_int8.tflite --audio=recordings/ \
      --threshold=0.5 --hop_seconds=0.25 --output=jsonl
  arecord -q -t raw -f S16_LE -r 16000 -c 1 | \
      kws-infer --model=workdir/export/kws/distill/model_stream_int8.tflite --audio=-

``--model`` is a ``.tflite`` file or a SavedModel folder written by
kws-export-tflite; its model card (``.json`` next to it) gives the task, the
labels, the sample rate and the kws clip length. Audio of any sample rate is
resampled; ``--audio=-`` reads raw 16-bit little-endian mono PCM at the card's
sample rate from standard input. kws, a streaming file
(``model_stream_<format>.tflite``, its card says so): the audio goes in hop by
hop, the posteriors are smoothed over ``--smooth_seconds``, and a keyword is
detected when its smoothed posterior rises above ``--threshold`` (then none
for ``--refractory_seconds``); one line per detection (``file time keyword
score``, the time when it fired) printed as it fires. kws, other files: one
line per detection (``file start end keyword score``), a clip-long window
sliding by ``--hop_seconds`` with repeated detections of a word merged; ctc: ``file transcript`` (NFC), the audio going through the model
in ``--chunk_seconds`` chunks overlapped by the model's receptive field (the
same logits as one pass, in bounded memory), decoded by ``--decoder`` (greedy,
beam, or beam_lm with the word language model of ``--lm``; see
``kws_tf/evaluation/decoding.py``). Audio is read in blocks. An unreadable
file gets an error line on stderr, the others are still processed, and the exit
code is 1. See ``kws_tf/inference.py``.
"""
import sys

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import cli, detection, inference
from kws_tf.evaluation import decoder_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "An exported .tflite file or SavedModel folder.")
flags.DEFINE_list("audio", None, "Audio files and/or folders (their .wav/.flac/.ogg/.mp3 "
                  "files), comma-separated; '-': raw 16-bit little-endian mono PCM at the "
                  "model card's sample rate from standard input.")
flags.DEFINE_float("threshold", None, "kws: minimum keyword probability of a window (default "
                   f"{inference.THRESHOLD:g}); streaming files: of the smoothed posterior "
                   "(default: the threshold kws-evaluate --always_on_model wrote into the "
                   f"card for its target false-alarm rate, else {inference.THRESHOLD:g}).")
flags.DEFINE_float("hop_seconds", 0.25, "kws, sliding-window files: seconds between window "
                   "starts (a streaming file has its own hop).")
flags.DEFINE_float("smooth_seconds", None, "kws, streaming files: the posteriors are averaged "
                   "over this many seconds of hops before the threshold (default: the card's "
                   f"always-on value, else {detection.SMOOTH_SECONDS:g}).")
flags.DEFINE_float("refractory_seconds", None, "kws, streaming files: after a detection, no "
                   "other for this many seconds (default: the card's always-on value, else "
                   f"{detection.REFRACTORY_SECONDS:g}).")
flags.DEFINE_float("chunk_seconds", inference.CHUNK_SECONDS,
                   "ctc: seconds of audio per model call; each chunk also gets the samples its "
                   "logits read on both sides (the card's receptive field), so the transcript "
                   "is that of one pass (levels 80 dB below the file's loudest, digital "
                   "silence, are clamped per chunk). 0: the whole file in one call (memory "
                   "grows with its length).")
flags.DEFINE_enum("output", "text", ["text", "jsonl"], "Output lines: tab-separated text or "
                  "one JSON object per file.")
decoder_flags.define_flags(default_decoder="greedy")
flags.adopt_module_key_flags(decoder_flags)
flags.mark_flags_as_required(["model", "audio"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    return inference.run(FLAGS.model, FLAGS.audio, FLAGS.threshold, FLAGS.hop_seconds,
                         FLAGS.output, chunk_seconds=FLAGS.chunk_seconds,
                         decoder=decoder_flags.decoder_from_flags(),
                         smooth_seconds=FLAGS.smooth_seconds,
                         refractory_seconds=FLAGS.refractory_seconds)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
