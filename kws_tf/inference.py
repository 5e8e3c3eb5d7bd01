"""Runs an exported model (TFLite file or SavedModel) over audio files.

An exported model takes a 16 kHz waveform ``[1, samples]`` and carries its
front end (``kws_tf.export.serving``). Its model card, ``<name>.json`` next to
the ``.tflite`` file or the SavedModel folder (``kws_tf.export.card``), says
what it is: task, labels, sample rate, kws clip length, ctc receptive field.

Audio is decoded in blocks (``kws_tf.audio.stream_audio``) and goes through
the model piece by piece, so the memory a file takes does not grow with its
length.

kws, a streaming file (its card has a ``streaming`` section,
``kws_tf.export.streaming``): the audio goes through it hop by hop from its
initial state (the last hop zero-padded), and the posteriors of every hop
through a ``detection.Detector`` (smoothing, threshold, refractory time): one
detection per spoken keyword with the time it fired, reported as soon as it
fires.

kws, any other file: a window of one clip slides over the audio every ``hop_seconds`` (the
last window zero-padded); each window whose probability of a keyword (any
class but "negative") exceeds ``threshold`` gives a detection of that keyword
from the window's start to its end. Detections of one keyword in consecutive
or overlapping windows are one occurrence: they merge into one detection with
the earliest start, the latest end and the highest score.

ctc: the audio goes through the model in chunks of ``chunk_seconds``, each
with the samples its logits read on both sides (the card's
``receptive_field``, plus one logit frame) and starting on a logit frame
boundary; the logits of a chunk's own frames are kept. They are the logits
of one pass over the whole file (to float rounding), with two exceptions: a
``dynamic`` file quantizes its activations per call, so its chunks differ
from one pass by that rounding; and the mfcc and log-mel front ends clamp mel
levels at the input's loudest minus 80 dB (``top_db``), so where a chunk
holds levels that far below the file's loudest (digital silence) they are
clamped to the chunk's own loudest instead. A model that reads the whole
input (card ``receptive_field`` null: attention, squeeze-excite) or whose
card has no receptive field gets ``GLOBAL_CONTEXT_SECONDS`` on both sides
instead, which is not exact; ``run`` says so on stderr. The transcript is
the decoding of the logits by a ``decoding.CtcDecoder`` (greedy by default,
frame by frame as the chunks arrive; beam decoders get the whole file's
logits), in NFC.
"""
import json
import math
import os
import sys
import time
from typing import BinaryIO, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, TextIO, Tuple

import numpy as np

from kws_tf import audio, detection, text

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SIGNATURE = "serving_default"
WAVEFORM = "waveform"
# ctc: seconds of audio per model call (``transcribe``).
CHUNK_SECONDS = 20.0
# ctc: context on each side of a chunk for a model without a bounded receptive field.
GLOBAL_CONTEXT_SECONDS = 2.0
# Samples per block read from an audio file.
BLOCK_SAMPLES = 1 << 16
# ``--audio`` value of standard input (raw 16-bit little-endian mono PCM).
STDIN = "-"
# kws: the threshold without one given or in the card.
THRESHOLD = 0.5


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


def initial_state(streaming: dict) -> Dict[str, np.ndarray]:
  """A streaming file's state before its first call, by input name, from the
  ``streaming`` section of its card (each state float32 or int8)."""
  return {name: np.full(value["shape"], value["initial"], np.dtype(value["dtype"]))
          for name, value in streaming["state"].items()}


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
    self.state = initial_state(self.streaming)

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


def sliding_windows(blocks: Iterable[np.ndarray], window: int,
                    hop: int) -> Iterator[Tuple[int, np.ndarray]]:
  """(start, samples) of the windows of ``window_starts`` over the audio of
  ``blocks`` (consecutive float32 ``[samples]`` pieces), each ``[window]``
  float32, the last zero-padded; holds at most a window and a block at a time."""
  if window < 1 or hop < 1:
    raise ValueError(f"window and hop must be >= 1 sample, got {window}, {hop}")
  buffer = np.zeros(0, np.float32)
  offset = 0  # the sample of the file at buffer[0]
  start = 0
  for block in blocks:
    buffer = np.concatenate([buffer, block])
    while start + window <= offset + len(buffer):
      yield start, buffer[start - offset:start - offset + window]
      start += hop
      keep = min(start, offset + len(buffer))
      buffer, offset = buffer[keep - offset:], keep
  end = offset + len(buffer)
  # The last windows: the first one, or those that start before the previous reached the end.
  while start == 0 or start - hop + window < end:
    out = np.zeros(window, np.float32)
    piece = buffer[max(0, start - offset):end - offset]
    out[:len(piece)] = piece
    yield start, out
    start += hop


def detect_keywords(model, card: dict, blocks: Iterable[np.ndarray], threshold: float,
                    hop_seconds: float) -> List[Detection]:
  """Keywords in audio (module docstring).

  Args:
    model: a kws ``TFLiteModel`` / ``SavedModel``.
    card: its model card (``clip_samples``, ``sample_rate``, ``labels.classes``).
    blocks: the audio as consecutive float32 ``[samples]`` pieces at the card's
      sample rate (``[waveform]`` for a waveform in memory).
    threshold: minimum probability of a keyword in a window.
    hop_seconds: seconds between window starts.
  """
  rate = card["sample_rate"]
  clip = card["clip_samples"]
  classes = card["labels"]["classes"]
  hop = max(1, int(round(hop_seconds * rate)))
  raw = []
  for start, window in sliding_windows(blocks, clip, hop):
    probabilities = model(window)["probabilities"][0]
    for index, name in enumerate(classes):
      if name != text.NEGATIVE_LABEL and probabilities[index] > threshold:
        raw.append(Detection(name, start / rate, (start + clip) / rate,
                             float(probabilities[index])))
  return merge_detections(raw, gap=max(0, hop - clip) / rate)


def hop_posteriors(model: StreamingTFLiteModel,
                   blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
  """The probabilities (float32 ``[classes]``) of each call of a streaming file over the
  audio of ``blocks`` (consecutive float32 ``[samples]`` pieces), from its initial
  state, one per ``hop_samples`` samples, the last hop zero-padded; each as soon as
  its hop has arrived."""
  model.reset()
  hop = model.hop_samples
  buffer = np.zeros(0, np.float32)
  for block in blocks:
    buffer = np.concatenate([buffer, block]) if len(buffer) else block
    while len(buffer) >= hop:
      yield model.step(buffer[:hop])["probabilities"][0]
      buffer = buffer[hop:]
  if len(buffer):
    yield model.step(np.pad(buffer, (0, hop - len(buffer))))["probabilities"][0]


def detection_settings(card: dict, threshold: Optional[float] = None,
                       smooth_seconds: Optional[float] = None,
                       refractory_seconds: Optional[float] = None) -> Tuple[float, float, float]:
  """(threshold, smooth_seconds, refractory_seconds) of a streaming file's detector:
  each as given, else the card's ``always_on`` value (kws-evaluate writes the
  threshold of a target false-alarm rate there, with the smoothing and
  refractory time it was measured with), else the defaults (``THRESHOLD``,
  ``detection.SMOOTH_SECONDS``, ``detection.REFRACTORY_SECONDS``)."""
  measured = card.get("always_on") or {}
  return (threshold if threshold is not None else measured.get("threshold", THRESHOLD),
          smooth_seconds if smooth_seconds is not None
          else measured.get("smooth_seconds", detection.SMOOTH_SECONDS),
          refractory_seconds if refractory_seconds is not None
          else measured.get("refractory_seconds", detection.REFRACTORY_SECONDS))


def stream_detections(model: StreamingTFLiteModel, card: dict, blocks: Iterable[np.ndarray],
                      threshold: float, smooth_seconds: float = detection.SMOOTH_SECONDS,
                      refractory_seconds: float = detection.REFRACTORY_SECONDS
                      ) -> Iterator[detection.Detection]:
  """Keywords in audio by a streaming file (module docstring), each yielded as it fires."""
  detector = detection.Detector(card["labels"]["classes"], model.streaming["hop_seconds"],
                                threshold, smooth_seconds, refractory_seconds)
  for probabilities in hop_posteriors(model, blocks):
    for _, found in detector.push(probabilities):
      yield found


def chunk_context(card: dict) -> Tuple[int, int, int]:
  """(left, right, hop) samples of ctc chunking: the context on each side of a
  chunk and the logit frame length, the contexts whole frames.

  ``receptive_field`` of the card plus one frame; ``GLOBAL_CONTEXT_SECONDS``
  when it is null or missing.
  """
  hop = int(round(card["logit_frame_seconds"] * card["sample_rate"]))
  field = card.get("receptive_field")
  if field:
    left, right = field["left_samples"], field["right_samples"]
  else:
    left = right = int(GLOBAL_CONTEXT_SECONDS * card["sample_rate"])
  return (math.ceil(left / hop) + 1) * hop, (math.ceil(right / hop) + 1) * hop, hop


def ctc_logits(model, card: dict, blocks: Iterable[np.ndarray],
               chunk_seconds: float = CHUNK_SECONDS) -> Iterator[np.ndarray]:
  """The logits of the audio of ``blocks``, chunk by chunk (module docstring).

  Args:
    model: a ctc ``TFLiteModel`` / ``SavedModel``.
    card: its model card (``sample_rate``, ``logit_frame_seconds``, ``receptive_field``).
    blocks: the audio as consecutive float32 ``[samples]`` pieces at the card's rate.
    chunk_seconds: audio per chunk (rounded to whole logit frames, at least
      one); 0 sends the whole file through at once.

  Yields float32 ``[frames, vocabulary]`` of consecutive logit frames; their
  concatenation is the logits of the whole file.
  """
  left, right, hop = chunk_context(card)
  chunk = max(1, round(chunk_seconds * card["sample_rate"] / hop)) * hop
  buffer = np.zeros(0, np.float32)
  offset = 0  # the sample of the file at buffer[0], a multiple of hop
  first = 0   # the first logit frame not yet yielded
  blocks = iter(blocks)
  ended = False
  while True:
    wanted = first * hop + chunk + right
    while not ended and (chunk_seconds <= 0 or offset + len(buffer) < wanted):
      block = next(blocks, None)
      if block is None:
        ended = True
      else:
        buffer = np.concatenate([buffer, block])
    start = max(0, first * hop - left)
    last = ended and (chunk_seconds <= 0 or offset + len(buffer) <= wanted)
    segment = buffer[start - offset:None if last else wanted - offset]
    if not len(segment):
      return
    outputs = model(segment)
    logits = outputs["logits"][0, :int(outputs["logit_frames"][0])]
    skip = first - start // hop
    if last:
      yield logits[skip:]
      return
    yield logits[skip:skip + chunk // hop]
    first += chunk // hop
    keep = max(0, first * hop - left)
    buffer, offset = buffer[keep - offset:], keep


def transcribe(model, card: dict, blocks: Iterable[np.ndarray],
               chunk_seconds: float = CHUNK_SECONDS, decoder=None) -> str:
  """Transcript (NFC) of audio by a ctc model (``card['labels']`` vocabulary).

  ``decoder``: a ``decoding.CtcDecoder``; None or greedy: per frame argmax
  over ``ctc_logits``, repeats merged, blanks dropped, chunk by chunk; a beam
  decoder gets the concatenated logits of the whole file.
  """
  vocabulary = text.Vocabulary(card["labels"]["vocabulary"])
  if decoder is not None and decoder.name != "greedy":
    logits = np.concatenate(list(ctc_logits(model, card, blocks, chunk_seconds)))
    return vocabulary.decode(decoder.decode(logits[None], np.array([len(logits)]),
                                            vocabulary)[0])
  blank = card["labels"]["blank_index"]
  ids: List[int] = []
  previous = -1
  for logits in ctc_logits(model, card, blocks, chunk_seconds):
    best = np.argmax(logits, axis=-1)
    if not len(best):
      continue
    new = best != np.concatenate([[previous], best[:-1]])
    ids.extend(best[new & (best != blank)].tolist())
    previous = int(best[-1])
  return vocabulary.decode(ids)


def audio_files(specs: Sequence[str]) -> List[str]:
  """Files of ``specs``: each a file (kept as given), ``STDIN`` (kept) or a folder
  (its audio files, sorted)."""
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


def _format_stream(path: str, found: detection.Detection, output: str) -> str:
  if output == "jsonl":
    return json.dumps({"file": path, **found._asdict()}, ensure_ascii=False)
  return f"{path}\t{found.time:.2f}\t{found.keyword}\t{found.score:.3f}"


def run(model_path: str, audio_specs: Sequence[str], threshold: Optional[float] = None,
        hop_seconds: float = 0.25, output: str = "text", out: TextIO = sys.stdout,
        err: TextIO = sys.stderr, chunk_seconds: float = CHUNK_SECONDS,
        decoder=None, smooth_seconds: Optional[float] = None,
        refractory_seconds: Optional[float] = None, stdin: Optional[BinaryIO] = None) -> int:
  """Runs a model over audio files and writes the results; returns the exit code.

  ``audio_specs``: files, folders and ``STDIN``: raw 16-bit little-endian mono
  PCM at the card's sample rate from ``stdin`` (None: the process's standard
  input), read one hop (streaming files) or ``BLOCK_SAMPLES`` at a time.

  Output (``output``), a sliding-window kws file or ctc: ``text`` lines
  ``<file> <start> <end> <keyword> <score>`` tab-separated per detection
  (``<file> -`` for none), or ``<file> <transcript>``; ``jsonl``: one JSON
  object per file with ``file`` and ``detections`` (keyword, start, end,
  score) or ``transcript``. A streaming kws file: one line per detection as
  it fires, ``<file> <time> <keyword> <score>`` or a JSON object with
  ``file``, ``keyword``, ``time``, ``score`` (``<file> -`` in text after a
  file without any). Every line is flushed. A file that cannot be read gets
  an error line on ``err``; the others are still processed, and the exit code
  is 1 if any file failed. ``threshold``: minimum keyword probability of a
  window (None: ``THRESHOLD``), or of a streaming file's smoothed posterior
  (None: ``detection_settings``, as ``smooth_seconds`` and
  ``refractory_seconds``); ``chunk_seconds``: ctc audio per model call
  (``ctc_logits``); ``decoder``: the ``decoding.CtcDecoder`` of ctc
  transcripts (None: greedy).
  """
  if output not in ("text", "jsonl"):
    raise ValueError(f"output must be text or jsonl, got {output!r}")
  if chunk_seconds < 0:
    raise ValueError(f"chunk_seconds must be >= 0, got {chunk_seconds}")
  card = read_card(model_path)
  model = load_model(model_path)
  streaming = isinstance(model, StreamingTFLiteModel)
  if streaming:
    settings = detection_settings(card, threshold, smooth_seconds, refractory_seconds)
  elif threshold is None:
    threshold = THRESHOLD
  if card["task"] == "ctc" and chunk_seconds > 0 and not card.get("receptive_field"):
    why = ("reads the whole input" if "receptive_field" in card
           else f"has no receptive field in its card {card_path(model_path)} (re-export it)")
    print(f"note: {model_path} {why}: audio longer than {chunk_seconds:g} s is transcribed in "
          f"chunks with {GLOBAL_CONTEXT_SECONDS:g} s of context on each side, which can "
          "differ from one pass (--chunk_seconds=0: one pass)", file=err, flush=True)
  failed = 0
  for path in audio_files(audio_specs):
    if path == STDIN:
      blocks = audio.read_pcm16(stdin or sys.stdin.buffer,
                                model.hop_samples if streaming else BLOCK_SAMPLES,
                                name="standard input")
    else:
      blocks = audio.stream_audio(path, card["sample_rate"], BLOCK_SAMPLES)
    try:
      if streaming:
        found = False
        for hit in stream_detections(model, card, blocks, *settings):
          print(_format_stream(path, hit, output), file=out, flush=True)
          found = True
        if not found and output == "text":
          print(f"{path}\t-", file=out, flush=True)
        continue
      if card["task"] == "kws":
        result = detect_keywords(model, card, blocks, threshold, hop_seconds)
      else:
        result = transcribe(model, card, blocks, chunk_seconds, decoder)
    except audio.AudioError as e:
      print(f"error: {e}", file=err, flush=True)
      failed += 1
      continue
    for line in _format(path, card["task"], result, output):
      print(line, file=out, flush=True)
  if failed:
    print(f"error: {failed} file(s) could not be read", file=err, flush=True)
  return 1 if failed else 0
