"""Runs an exported model (TFLite file or SavedModel) over audio files.

An exported model takes a 16 kHz waveform ``[1, samples]`` and carries its
front end (``kws_tf.export.serving``). Its model card, ``<name>.json`` next to
the ``.tflite`` file or the SavedModel folder (``kws_tf.export.card``), says
what it is: task, labels, sample rate, kws clip length.

kws: a window of one clip slides over the audio every ``hop_seconds`` (the
last window zero-padded); each window whose probability of a keyword (any
class but "negative") exceeds ``threshold`` gives a detection of that keyword
from the window's start to its end. Detections of one keyword in consecutive
or overlapping windows are one occurrence: they merge into one detection with
the earliest start, the latest end and the highest score.

ctc: the whole file goes through the model at once; the transcript is the
greedy (best-path) decoding of its logits.
"""
import json
import os
import sys
import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, TextIO

import numpy as np

from kws_tf import audio, text

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SIGNATURE = "serving_default"
WAVEFORM = "waveform"


class Detection(NamedTuple):
  """A keyword found in a file; times in seconds from the start of the file."""
  keyword: str
  start: float
  end: float
  score: float


def card_path(model_path: str) -> str:
  """The model card of an exported model: ``x.tflite`` -> ``x.json``, ``dir`` -> ``dir.json``."""
  path = model_path.rstrip(os.sep)
  if path.endswith(".tflite"):
    path = path[:-len(".tflite")]
  return path + ".json"


def read_card(model_path: str) -> dict:
  """The model card next to ``model_path``; FileNotFoundError naming it when missing."""
  path = card_path(model_path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no model card {path} next to {model_path} (kws-export-tflite "
                            "writes one next to every file it exports)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _quantize(values: np.ndarray, detail: dict) -> np.ndarray:
  """float values -> the tensor's dtype (int8: with its scale and zero point)."""
  if detail["dtype"] == np.float32:
    return values.astype(np.float32)
  scale, zero_point = detail["quantization"]
  info = np.iinfo(detail["dtype"])
  return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
  """A tensor's values, int8 ones as float32 (with their scale and zero point)."""
  if detail["dtype"] != np.int8:
    return values
  scale, zero_point = detail["quantization"]
  return (values.astype(np.float32) - zero_point) * scale


class TFLiteModel:
  """A TFLite file run with ai-edge-litert.

  Calling it with a float32 waveform ``[samples]`` in [-1, 1] returns the
  signature's outputs for the batch of one, as float32 (int8 outputs
  dequantized; ``logit_frames`` int32); an int8 input is quantized with its
  scale and zero point. A dynamic input length (ctc) is resized per call.

  Args:
    path: the ``.tflite`` file, or None with ``content``.
    content: the model bytes.
    num_threads: interpreter threads (1 for latency measurements).
  """

  def __init__(self, path: Optional[str] = None, content: Optional[bytes] = None,
               num_threads: Optional[int] = None):
    from ai_edge_litert.interpreter import Interpreter
    self.path = path
    self._interpreter = Interpreter(model_path=path, model_content=content,
                                    num_threads=num_threads)
    self._runner = self._interpreter.get_signature_runner(SIGNATURE)
    self.input_detail = self._runner.get_input_details()[WAVEFORM]
    self.output_details = self._runner.get_output_details()

  def __call__(self, waveform: np.ndarray) -> Dict[str, np.ndarray]:
    x = _quantize(np.asarray(waveform, np.float32)[np.newaxis], self.input_detail)
    outputs = self._runner(**{WAVEFORM: x})
    return {name: _dequantize(value, self.output_details[name])
            for name, value in outputs.items()}


class StreamingTFLiteModel:
  """A streaming TFLite file (``kws_tf.export.streaming``) run with ai-edge-litert.

  ``step(hop)`` feeds the next ``hop_samples`` samples (float32 ``[hop_samples]``)
  with the state the call before returned and gives that call's ``logits`` and
  ``probabilities`` (``[1, classes]``); ``reset()`` puts the state back to its
  initial values. Calling it with one window (float32 ``[clip_samples]``) streams
  the window from the initial state and returns the outputs of the last call:
  those of the window, as a ``TFLiteModel`` of the non-streaming file gives them.

  Args:
    path: the ``.tflite`` file.
    streaming: the ``streaming`` section of its card; None reads the card.
    num_threads: interpreter threads.
  """

  def __init__(self, path: str, streaming: Optional[dict] = None,
               num_threads: Optional[int] = None):
    from ai_edge_litert.interpreter import Interpreter
    self.path = path
    self.streaming = streaming if streaming is not None else read_card(path)["streaming"]
    self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
    self._runner = self._interpreter.get_signature_runner(SIGNATURE)
    self.input_detail = self._runner.get_input_details()[WAVEFORM]
    self.output_details = self._runner.get_output_details()
    self.hop_samples = self.streaming["hop_samples"]
    self.reset()

  def reset(self) -> None:
    """The state of a stream not yet started."""
    self.state = {name: np.full(value["shape"], value["initial"], np.float32)
                  for name, value in self.streaming["state"].items()}

  def step(self, hop: np.ndarray) -> Dict[str, np.ndarray]:
    """The outputs of the next call, on ``hop`` (float32 ``[hop_samples]``)."""
    outputs = self._runner(**{WAVEFORM: np.asarray(hop, np.float32)[np.newaxis]}, **self.state)
    for name, value in self.streaming["state"].items():
      self.state[name] = outputs.pop(value["output"])
    return outputs

  def __call__(self, waveform: np.ndarray) -> Dict[str, np.ndarray]:
    if len(waveform) != self.streaming["clip_samples"]:
      raise ValueError(f"{self.path} streams windows of {self.streaming['clip_samples']} "
                       f"samples, got {len(waveform)}")
    self.reset()
    for start in range(0, len(waveform), self.hop_samples):
      outputs = self.step(waveform[start:start + self.hop_samples])
    return outputs


class SavedModel:
  """A SavedModel folder's serving signature; called as ``TFLiteModel``."""

  def __init__(self, path: str):
    import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf
    self.path = path
    self._tf = tf
    self._loaded = tf.saved_model.load(path)
    self._signature = self._loaded.signatures[SIGNATURE]

  def output_specs(self) -> Dict[str, dict]:
    """Output name -> ``{"shape", "dtype"}`` (-1 for a dynamic size)."""
    return {name: {"shape": [-1 if d is None else d for d in spec.shape],
                   "dtype": spec.dtype.name}
            for name, spec in self._signature.structured_outputs.items()}

  def __call__(self, waveform: np.ndarray) -> Dict[str, np.ndarray]:
    x = self._tf.constant(np.asarray(waveform, np.float32)[np.newaxis])
    return {name: value.numpy() for name, value in self._signature(**{WAVEFORM: x}).items()}


def load_model(path: str, num_threads: Optional[int] = None):
  """A ``TFLiteModel`` for a ``.tflite`` file (a ``StreamingTFLiteModel`` when its
  card has a ``streaming`` section), a ``SavedModel`` for a folder."""
  if os.path.isdir(path):
    return SavedModel(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such TFLite file or SavedModel folder")
  if os.path.exists(card_path(path)) and "streaming" in read_card(path):
    return StreamingTFLiteModel(path, num_threads=num_threads)
  return TFLiteModel(path, num_threads=num_threads)


def call_times_ms(model, waveform: np.ndarray, runs: int, warmup: int = 1) -> np.ndarray:
  """Wall times of ``runs`` calls ``model(waveform)`` after ``warmup`` untimed ones, ms."""
  for _ in range(warmup):
    model(waveform)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    model(waveform)
    times.append(time.perf_counter() - start)
  return np.asarray(times) * 1000.0


def median_latency_ms(model, waveform: np.ndarray, runs: int = 5) -> float:
  """Median wall time of ``model(waveform)`` over ``runs`` calls after one warm-up, ms."""
  return float(np.median(call_times_ms(model, waveform, runs)))


def window_starts(num_samples: int, window: int, hop: int) -> List[int]:
  """Starts of windows of ``window`` samples every ``hop`` samples covering ``num_samples``.

  The first starts at 0 and the last is the first that reaches the end (it is
  zero-padded by the caller); audio shorter than one window gives one window.
  """
  if window < 1 or hop < 1:
    raise ValueError(f"window and hop must be >= 1 sample, got {window}, {hop}")
  count = 1 + max(0, -(-(num_samples - window) // hop))
  return [i * hop for i in range(count)]


def merge_detections(detections: Iterable[Detection], gap: float = 0.0) -> List[Detection]:
  """One detection per occurrence of a keyword.

  Detections of the same keyword whose spans overlap or are at most ``gap``
  seconds apart (consecutive windows) merge into one with the earliest start,
  the latest end and the highest score. Returns them sorted by start, then keyword.
  """
  merged: List[Detection] = []
  open_by_keyword: Dict[str, int] = {}
  for d in sorted(detections, key=lambda d: (d.start, d.end)):
    index = open_by_keyword.get(d.keyword)
    if index is not None and d.start <= merged[index].end + gap + 1e-9:
      last = merged[index]
      merged[index] = Detection(d.keyword, min(last.start, d.start), max(last.end, d.end),
                                max(last.score, d.score))
    else:
      open_by_keyword[d.keyword] = len(merged)
      merged.append(d)
  return sorted(merged, key=lambda d: (d.start, d.keyword))


def detect_keywords(model, card: dict, waveform: np.ndarray, threshold: float,
                    hop_seconds: float) -> List[Detection]:
  """Keywords in a waveform (module docstring).

  Args:
    model: a kws ``TFLiteModel`` / ``SavedModel``.
    card: its model card (``clip_samples``, ``sample_rate``, ``labels.classes``).
    waveform: float32 ``[samples]`` at the card's sample rate.
    threshold: minimum probability of a keyword in a window.
    hop_seconds: seconds between window starts.
  """
  rate = card["sample_rate"]
  clip = card["clip_samples"]
  classes = card["labels"]["classes"]
  hop = max(1, int(round(hop_seconds * rate)))
  raw = []
  for start in window_starts(len(waveform), clip, hop):
    window = np.zeros(clip, np.float32)
    piece = waveform[start:start + clip]
    window[:len(piece)] = piece
    probabilities = model(window)["probabilities"][0]
    for index, name in enumerate(classes):
      if name != text.NEGATIVE_LABEL and probabilities[index] > threshold:
        raw.append(Detection(name, start / rate, (start + clip) / rate,
                             float(probabilities[index])))
  return merge_detections(raw, gap=max(0, hop - clip) / rate)


def transcribe(model, card: dict, waveform: np.ndarray) -> str:
  """Greedy transcript of a waveform by a ctc model (``card['labels']`` vocabulary)."""
  from kws_tf.evaluation import decoding
  outputs = model(waveform)
  vocabulary = text.Vocabulary(card["labels"]["vocabulary"])
  ids = decoding.greedy_decode(outputs["logits"], outputs["logit_frames"],
                               blank=card["labels"]["blank_index"])[0]
  return vocabulary.decode(ids)


def audio_files(specs: Sequence[str]) -> List[str]:
  """Files of ``specs``: each a file (kept as given) or a folder (its audio files, sorted)."""
  files = []
  for spec in specs:
    if os.path.isdir(spec):
      found = []
      for root, _, names in os.walk(spec):
        found.extend(os.path.join(root, n) for n in names
                     if n.lower().endswith(AUDIO_EXTENSIONS))
      files.extend(sorted(found))
    else:
      files.append(spec)
  return files


def _format(path: str, task: str, result, output: str) -> List[str]:
  if output == "jsonl":
    if task == "kws":
      record = {"file": path, "detections": [d._asdict() for d in result]}
    else:
      record = {"file": path, "transcript": result}
    return [json.dumps(record, ensure_ascii=False)]
  if task == "ctc":
    return [f"{path}\t{result}"]
  if not result:
    return [f"{path}\t-"]
  return [f"{path}\t{d.start:.2f}\t{d.end:.2f}\t{d.keyword}\t{d.score:.3f}" for d in result]


def run(model_path: str, audio_specs: Sequence[str], threshold: float = 0.5,
        hop_seconds: float = 0.25, output: str = "text", out: TextIO = sys.stdout,
        err: TextIO = sys.stderr) -> int:
  """Runs a model over audio files and writes one result per file; returns the exit code.

  Output (``output``): ``text`` lines ``<file> <start> <end> <keyword> <score>``
  tab-separated per detection (``<file> -`` for none), or ``<file>
  <transcript>``; ``jsonl``: one JSON object per file with ``file`` and
  ``detections`` (keyword, start, end, score) or ``transcript``. A file that
  cannot be read gets an error line on ``err``; the others are still
  processed, and the exit code is 1 if any file failed.
  """
  if output not in ("text", "jsonl"):
    raise ValueError(f"output must be text or jsonl, got {output!r}")
  card = read_card(model_path)
  model = load_model(model_path)
  failed = 0
  for path in audio_files(audio_specs):
    try:
      waveform = audio.read_audio(path, card["sample_rate"])
    except audio.AudioError as e:
      print(f"error: {e}", file=err, flush=True)
      failed += 1
      continue
    if card["task"] == "kws":
      result = detect_keywords(model, card, waveform, threshold, hop_seconds)
    else:
      result = transcribe(model, card, waveform)
    for line in _format(path, card["task"], result, output):
      print(line, file=out, flush=True)
  if failed:
    print(f"error: {failed} file(s) could not be read", file=err, flush=True)
  return 1 if failed else 0
