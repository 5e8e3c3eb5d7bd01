r"""Benchmark of the Whisper encoder port at PhoWhisper-base size; prints a markdown table.

  .venv/bin/python benchmarks/teacher.py [--batch_size=8] [--repeats=5]
  .venv/bin/python benchmarks/teacher.py --whisper_dir=workdir/models/whisper-base

Not a test. The encoder (kws_tf.models.whisper) has PhoWhisper-base's sizes
(d_model 512, 6 blocks, 8 heads, ffn 2048, 80 mel bins; 20.6 M parameters)
and random weights (speed does not depend on the weights), or the weights of a
real Whisper checkpoint directory (``--whisper_dir``: Hugging Face or
CTranslate2, e.g. ``kws-get-whisper-base``'s Whisper base). It measures

1. throughput (clips/s) on batches of 1 s and 2 s clips, each run two ways:
   padded to Whisper's 30 s window (3000 frames, what earlier projects did
   for every clip) and as a trimmed window of the clip's own frames (100 or
   200), and the speed-up of trimming;
2. the latency (ms) of one 1 s clip (batch 1) in a trimmed window.

Each setting is a ``tf.function`` with a fixed input signature, called
``--warmup`` times (tracing included), then timed ``--repeats`` times
(``--latency_repeats`` for the latency) up to the numpy result; the table
gives the median. Clip frames hold random values in the range of Whisper's
log-mel, padding frames -1.0 (about the log-mel of silence); values do not
change the amount of computation.
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import os
import statistics
import sys
import time
from typing import Callable, List

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import app, flags

from kws_tf.models import whisper

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 8, "Clips per batch for the throughput rows.")
flags.DEFINE_integer("repeats", 5, "Timed calls per throughput setting.")
flags.DEFINE_integer("latency_repeats", 30, "Timed calls for the single-clip latency.")
flags.DEFINE_integer("warmup", 1, "Untimed calls before timing (the first one traces).")
flags.DEFINE_bool("jit_compile", False, "Compile the encoder with XLA.")
flags.DEFINE_integer("seed", 0, "Seed of the random weights and inputs.")
flags.DEFINE_string("whisper_dir", None, "A Whisper checkpoint directory whose encoder to time "
                    "(must be PhoWhisper-base sized); random weights when unset.")

# PhoWhisper-base's encoder (vinai/PhoWhisper-base config.json).
BASE_CONFIG = {"num_mel_bins": 80, "d_model": 512, "encoder_layers": 6,
               "encoder_attention_heads": 8, "encoder_ffn_dim": 2048,
               "max_source_positions": 1500}
WINDOW_FRAMES = 3000     # Whisper's 30 s window of 10 ms frames
FRAMES_PER_SECOND = 100
PADDING_VALUE = -1.0


def make_encoder_fn(encoder: whisper.WhisperEncoder, batch: int,
                    frames: int) -> Callable[[np.ndarray], np.ndarray]:
  """A tf.function for ``[batch, frames, mels]`` inputs giving numpy outputs."""
  spec = tf.TensorSpec([batch, frames, BASE_CONFIG["num_mel_bins"]], tf.float32)
  run = tf.function(lambda x: encoder(x)["last_hidden_state"],
                    input_signature=[spec], jit_compile=FLAGS.jit_compile)
  return lambda x: run(x).numpy()


def features(rng: np.random.Generator, batch: int, clip_seconds: float,
             frames: int) -> np.ndarray:
  """float32 ``[batch, frames, mels]``: clips of ``clip_seconds``, then padding."""
  clip_frames = round(clip_seconds * FRAMES_PER_SECOND)
  x = np.full((batch, frames, BASE_CONFIG["num_mel_bins"]), PADDING_VALUE, np.float32)
  x[:, :clip_frames] = rng.uniform(-1.0, 1.5, (batch, clip_frames, x.shape[2]))
  return x


def median_seconds(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                   repeats: int) -> float:
  """Median wall time of ``fn(x)`` over ``repeats`` calls after the warm-up."""
  for _ in range(FLAGS.warmup):
    fn(x)
  times: List[float] = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(x)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def cpu_model() -> str:
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return "unknown"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # One traced function per setting, by design: silence the retracing warning.
  tf.get_logger().setLevel("ERROR")
  keras.utils.set_random_seed(FLAGS.seed)
  rng = np.random.default_rng(FLAGS.seed)
  if FLAGS.whisper_dir:
    encoder = whisper.load_encoder(FLAGS.whisper_dir)
    sizes = {k: encoder.whisper_config[k] for k in BASE_CONFIG}
    if sizes != BASE_CONFIG:
      raise app.UsageError(f"{FLAGS.whisper_dir} is not PhoWhisper-base sized: {sizes}")
    weights = f"the weights of {FLAGS.whisper_dir}"
  else:
    encoder = whisper.random_encoder(BASE_CONFIG)
    weights = "random weights"
  load = os.getloadavg()[0]
  batch = FLAGS.batch_size

  rows = []
  for clip_seconds in (1.0, 2.0):
    trimmed = round(clip_seconds * FRAMES_PER_SECOND)
    rates = {}
    for frames in (WINDOW_FRAMES, trimmed):
      print(f"timing {clip_seconds:g} s clips, {frames} frames, batch {batch}", file=sys.stderr)
      seconds = median_seconds(make_encoder_fn(encoder, batch, frames),
                               features(rng, batch, clip_seconds, frames), FLAGS.repeats)
      rates[frames] = batch / seconds
      speedup = ("1.00x" if frames == WINDOW_FRAMES
                 else f"**{rates[frames] / rates[WINDOW_FRAMES]:.1f}x**")
      window = "30 s (padded)" if frames == WINDOW_FRAMES else "trimmed"
      rows.append([f"{clip_seconds:g} s", window, str(frames),
                   str(whisper.output_frames(frames)), str(batch),
                   f"{1000 * seconds:,.1f}", f"{rates[frames]:,.1f}", speedup])

  print("timing the latency of one 1 s clip, trimmed", file=sys.stderr)
  latency = median_seconds(make_encoder_fn(encoder, 1, FRAMES_PER_SECOND),
                           features(rng, 1, 1.0, FRAMES_PER_SECOND), FLAGS.latency_repeats)
  rows.append(["1 s", "trimmed, latency", str(FRAMES_PER_SECOND),
               str(whisper.output_frames(FRAMES_PER_SECOND)), "1",
               f"**{1000 * latency:,.1f}**", f"{1 / latency:,.1f}", ""])

  header = ["clip", "window", "input frames", "encoder frames", "batch",
            "ms per call (median)", "clips/s", "speed-up vs 30 s window"]
  print("command: " + " ".join([sys.executable] + sys.argv))
  print(f"machine: {os.cpu_count()} cores, {cpu_model()}; TensorFlow {tf.__version__}; "
        f"1-minute load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end")
  print(f"encoder: PhoWhisper-base size, {weights}, {encoder.count_params():,} "
        f"parameters, float32, jit_compile={FLAGS.jit_compile}; median of "
        f"{FLAGS.repeats} calls per throughput row ({FLAGS.latency_repeats} for the "
        f"latency) after {FLAGS.warmup} warm-up call(s)")
  print()
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  app.run(main)
