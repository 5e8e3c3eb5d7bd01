r"""Single-thread CPU time per second of audio: the streaming int8 file against the
sliding window recomputed at the same hop.

  .venv/bin/python benchmarks/streaming.py [--workdir=workdir] [--hops=0.02,0.1]
      [--model_dir=<a kws student> --data_dir=<its records>]

Not a test. Exports a trained kws student (``--model_dir``, default the
pipeline's distilled one; ``--data_dir`` the records it was trained on,
default the pipeline's) afresh with ``kws-export-tflite
--formats=int8,stream_int8 --stream_hop_seconds=<hop>`` for each hop of
``--hops`` into ``--out_dir``, then runs ``--seconds`` of audio through both
files in ai-edge-litert's interpreter with one thread, one posterior vector per
hop:

* stream: ``model_stream_int8.tflite`` once per hop, its state outputs fed back
  as the next call's state inputs;
* sliding window: ``model_int8.tflite`` on the last 1 s clip once per hop, its
  whole front end and network recomputed (what ``kws-infer --hop_seconds``
  does).

CPU time of the calling thread (the interpreter's only thread): of the
``invoke()`` calls alone (each less what the clock itself reports around an
empty interval, ``timer_overhead``), and of the whole loop (also the copies of
the waveform, the state and the posteriors in and out of the interpreter from
Python); the median of ``--rounds`` rounds, the two files taking turns round by
round, in ms per second of audio. The targets (the always-on detection issue):
the stream at most 0.5 ms per second of audio and at least 5x less than the
sliding window.

With ``--always_on_set`` (a ``kws-make-always-on-set`` folder), each stream
file is also scored on its long recordings as ``kws-evaluate
--always_on_model`` scores it (``kws_tf.evaluation.always_on``, default
refractory time, ``--smooth_seconds`` of posterior averaging): the FRR at 1 false alarm per hour, and the
detection delay at that threshold: the median, over the detected keywords, of
the time the detection fires after the keyword's end (target: at most 200 ms).
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List

import numpy as np
from absl import app, flags

from kws_tf import detection, inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_MS_PER_SECOND = 0.5
TARGET_SPEEDUP = 5.0
TARGET_DELAY_MS = 200.0

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdir", "A kws-pipeline workdir (its distilled kws student, "
                    "records and corpus are read).")
flags.DEFINE_string("model_dir", None, "A kws student model dir instead of "
                    "<workdir>/models/kws/distill.")
flags.DEFINE_string("data_dir", None, "The records --model_dir was trained on (their front "
                    "end; parity and calibration clips) instead of <workdir>/records/kws.")
flags.DEFINE_list("hops", ["0.02", "0.1"], "Hops to measure, seconds (each a multiple of the "
                  "front end's frame step that divides the clip).")
flags.DEFINE_string("out_dir", "/tmp/kws_tf_streaming", "Exported files (replaced every run, "
                    "kept for inspection).")
flags.DEFINE_float("seconds", 20.0, "Seconds of audio per round.")
flags.DEFINE_integer("rounds", 15, "Timed rounds per file and hop (after one untimed round); "
                     "the stream and the sliding window take turns.")
flags.DEFINE_integer("seed", 0, "Seed of the audio (noise: the time does not depend on it).")
flags.DEFINE_string("always_on_set", None, "A kws-make-always-on-set folder: also the FRR at "
                    "1 false alarm per hour and the median detection delay of each stream file.")
flags.DEFINE_float("smooth_seconds", None, "With --always_on_set: the posterior averaging of "
                   "the detector (default: kws-infer's).")


def _run(command: List[str]) -> None:
  print(f"== {' '.join(shlex.quote(c) for c in command)}", flush=True)
  result = subprocess.run(command, cwd=REPO)
  if result.returncode != 0:
    raise SystemExit(f"failed (exit {result.returncode}): {command}")


def _interpreter(path: str):
  """A one-thread interpreter of ``path`` and its signature's input and output
  tensor indices by name (read from a second interpreter: a signature runner
  keeps references that block raw tensor access)."""
  from ai_edge_litert.interpreter import Interpreter
  signature = Interpreter(model_path=path).get_signature_runner(inference.SIGNATURE)
  inputs = {k: v["index"] for k, v in signature.get_input_details().items()}
  outputs = {k: v["index"] for k, v in signature.get_output_details().items()}
  interpreter = Interpreter(model_path=path, num_threads=1)
  interpreter.allocate_tensors()
  return interpreter, inputs, outputs


def timer_overhead(pairs: int = 20000) -> float:
  """CPU seconds that a ``time.thread_time()`` pair reports around nothing (the
  clock's own system call): the median over 5 runs of the mean of ``pairs``."""
  means = []
  for _ in range(5):
    total = 0.0
    for _ in range(pairs):
      before = time.thread_time()
      total += time.thread_time() - before
    means.append(total / pairs)
  return float(np.median(means))


def time_stream(path: str, streaming: dict, waveform: np.ndarray,
                overhead: float = 0.0) -> Dict[str, float]:
  """CPU seconds of one pass of ``waveform`` through a streaming file, hop by hop;
  ``overhead``: seconds subtracted from each timed call (``timer_overhead``)."""
  interpreter, inputs, outputs = _interpreter(path)
  hop = streaming["hop_samples"]
  state = inference.initial_state(streaming)
  invoke = 0.0
  start = time.thread_time()
  for end in range(hop, len(waveform) + 1, hop):
    interpreter.set_tensor(inputs[inference.WAVEFORM], waveform[np.newaxis, end - hop:end])
    for name, value in state.items():
      interpreter.set_tensor(inputs[name], value)
    before = time.thread_time()
    interpreter.invoke()
    invoke += time.thread_time() - before - overhead
    for name, value in streaming["state"].items():
      state[name] = interpreter.get_tensor(outputs[value["output"]])
    interpreter.get_tensor(outputs["probabilities"])
  return {"invoke": invoke, "loop": time.thread_time() - start}


def time_sliding(path: str, clip: int, hop: int, waveform: np.ndarray,
                 overhead: float = 0.0) -> Dict[str, float]:
  """CPU seconds of the windows of ``clip`` samples ending every ``hop`` samples;
  ``overhead`` as ``time_stream``'s."""
  interpreter, inputs, outputs = _interpreter(path)
  padded = np.concatenate([np.zeros(clip, np.float32), waveform])
  invoke = 0.0
  start = time.thread_time()
  for end in range(hop, len(waveform) + 1, hop):
    interpreter.set_tensor(inputs[inference.WAVEFORM], padded[np.newaxis, end:end + clip])
    before = time.thread_time()
    interpreter.invoke()
    invoke += time.thread_time() - before - overhead
    interpreter.get_tensor(outputs["probabilities"])
  return {"invoke": invoke, "loop": time.thread_time() - start}


def side_by_side(measures: Dict[str, Callable[[], Dict[str, float]]], rounds: int,
                 seconds: float) -> Dict[str, Dict[str, float]]:
  """Per name of ``measures``, the median over ``rounds`` timed rounds of its
  ``measure()``, in ms per second of audio of ``seconds``. The measures take turns
  round by round (after one untimed round each), so whatever slows the machine
  for a while slows both sides alike."""
  for measure in measures.values():
    measure()
  timed = {name: [] for name in measures}
  for _ in range(rounds):
    for name, measure in measures.items():
      timed[name].append(measure())
  return {name: {key: 1000.0 * float(np.median([r[key] for r in runs])) / seconds
                 for key in runs[0]}
          for name, runs in timed.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  command = " ".join(shlex.quote(c) for c in [sys.executable] + sys.argv)
  model_dir = FLAGS.model_dir or os.path.join(FLAGS.workdir, "models", "kws", "distill")
  data_dir = FLAGS.data_dir or os.path.join(FLAGS.workdir, "records", "kws")
  if not os.path.exists(os.path.join(model_dir, "model.json")):
    raise SystemExit(f"no trained kws student in {model_dir}: run kws-pipeline "
                     f"--workdir={FLAGS.workdir} first (or give --model_dir)")
  overhead = timer_overhead()
  smooth = detection.SMOOTH_SECONDS if FLAGS.smooth_seconds is None else FLAGS.smooth_seconds
  rows = []
  for hop_seconds in FLAGS.hops:
    folder = os.path.join(FLAGS.out_dir, f"hop_{hop_seconds}")
    shutil.rmtree(folder, ignore_errors=True)
    # Accuracy is the export's business (its cards), not this table's.
    _run([sys.executable, "-m", "kws_tf.bin.export_tflite", f"--model_dir={model_dir}",
          f"--data_dir={data_dir}",
          f"--audio_dir={os.path.join(FLAGS.workdir, 'corpus')}", f"--out_dir={folder}",
          "--formats=int8,stream_int8", f"--stream_hop_seconds={hop_seconds}",
          "--num_parity=50", "--num_calibration=50", "--max_accuracy_drop=100"])
    stream_path = os.path.join(folder, "model_stream_int8.tflite")
    window_path = os.path.join(folder, "model_int8.tflite")
    card = inference.read_card(stream_path)
    streaming = card["streaming"]
    hop, rate = streaming["hop_samples"], card["sample_rate"]
    samples = int(FLAGS.seconds * rate) // hop * hop
    waveform = np.random.default_rng(FLAGS.seed).uniform(-0.1, 0.1, samples).astype(np.float32)
    seconds = samples / rate
    times = side_by_side({
        "stream": lambda: time_stream(stream_path, streaming, waveform, overhead),
        "sliding": lambda: time_sliding(window_path, card["clip_samples"], hop, waveform,
                                        overhead)}, FLAGS.rounds, seconds)
    stream, sliding = times["stream"], times["sliding"]
    metric = None
    if FLAGS.always_on_set:
      from kws_tf.evaluation import always_on
      metric = always_on.evaluate(inference.StreamingTFLiteModel(stream_path, streaming), card,
                                  FLAGS.always_on_set, smooth_seconds=smooth)["groups"]["all"]
    rows.append((hop / rate, stream, sliding, os.path.getsize(stream_path),
                 os.path.getsize(window_path), card["parity"]["drop_points"], metric,
                 streaming.get("computes", "the network on the whole window")))

  print()
  print(f"command: {command}")
  print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; one interpreter "
        f"thread; {FLAGS.seconds:g} s of audio per round, median of {FLAGS.rounds} rounds, "
        f"{overhead * 1e6:.2f} us of the clock's own per timed call subtracted; "
        f"model {model_dir}")
  print(f"each stream call computes {rows[0][7]}")
  print()
  always = FLAGS.always_on_set is not None
  print("| hop (ms) | stream int8: ms CPU / s audio, invoke (loop) | sliding int8 window: "
        "invoke (loop) | speed-up (invoke) | sizes stream / window (KB) | stream parity "
        "(points lost) |" + (" FRR at 1 FA/h (threshold) | median delay after the keyword's "
                             "end (ms) |" if always else ""))
  print("|---|---|---|---|---|---|" + ("---|---|" if always else ""))
  for hop, stream, sliding, stream_size, window_size, drop, metric, _ in rows:
    line = (f"| {hop * 1000:g} | {stream['invoke']:.3f} ({stream['loop']:.3f}) | "
            f"{sliding['invoke']:.3f} ({sliding['loop']:.3f}) | "
            f"{sliding['invoke'] / stream['invoke']:.1f}x | {stream_size / 1024:.0f} / "
            f"{window_size / 1024:.0f} | {drop:+.2f} |")
    if always:
      point = metric["target"]
      line += (" none reaches 1/h | - |" if point is None else
               f" {100 * point['frr']:.1f} % ({point['threshold']:g}) | "
               + ("-" if point["median_delay_ms"] is None else f"{point['median_delay_ms']:.0f}")
               + " |")
    print(line)
  print()
  for hop, stream, sliding, _, _, _, metric, _ in rows:
    speedup = sliding["invoke"] / stream["invoke"]
    print(f"targets at {hop * 1000:g} ms: {stream['invoke']:.3f} ms per s of audio "
          f"(<= {TARGET_MS_PER_SECOND:g}: "
          f"{'met' if stream['invoke'] <= TARGET_MS_PER_SECOND else 'missed'}), "
          f"{speedup:.1f}x less than the sliding window (>= {TARGET_SPEEDUP:g}x: "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'missed'})"
          + ("" if metric is None or metric["target"] is None
             or metric["target"]["median_delay_ms"] is None else
             f", median delay {metric['target']['median_delay_ms']:.0f} ms (<= "
             f"{TARGET_DELAY_MS:g}: "
             f"{'met' if metric['target']['median_delay_ms'] <= TARGET_DELAY_MS else 'missed'})"))
  if always:
    print(f"always-on set: {FLAGS.always_on_set}, smoothing {smooth:g} s, "
          f"{rows[0][6]['hours']:.2f} h, "
          f"{rows[0][6]['occurrences']} keywords")


if __name__ == "__main__":
  app.run(main)
