"""Export: SavedModel and TFLite files with the front end inside, parity check, model cards.

``export(model_dir, data_dir, out_dir, config)`` writes, into ``out_dir``:

  saved_model/           the ``serving.ServingModule`` of the trained model
                         (waveform in, outputs out; signature ``serving_default``)
  model_<format>.tflite  one per format, converted from the SavedModel:
      float32  plain conversion
      float16  float16 weights (computation in float32)
      dynamic  int8 weights of the model (the front end's stay float32),
               activations quantized at run time
      int8     int8 weights and activations of the model, calibrated on
               train-split waveforms; the front end and the normalisation stay
               float32; the waveform input and the outputs are int8 or float32
               (``int8_io``)
      qat      the model fine-tuned with quantization-aware training
               (``kws_tf.export.qat``), then converted as int8
  <name>.json, <name>.md the model card of each (``model_card``), next to it:
                         saved_model.json, model_<format>.json

Why the front end stays float32: a power spectrum spans far more than the 8
bits of an int8 tensor. int8 (and qat) files quantize the model's layers only,
the front end and the normalisation stay float32; dynamic files keep the front
end's constants (DFT, mel, delta matrices) float32 (the errors of both ways:
BUILD.md, TFLite export internals).

Parity: ``num_parity`` test examples (spread over the split) go through the Keras
model (on the features stored in the records, normalised as in training) and
through every exported file (on the same examples' waveforms); each card
holds the maximum absolute logit difference from Keras over all examples
(ctc: over the valid frames) and the accuracy (kws) or CER (ctc) of both. An
int8 or qat file that loses more than ``max_accuracy_drop`` points (kws:
accuracy, ctc: CER, in percent) against Keras makes ``export`` raise
``ExportError`` naming the file and the numbers, after every format has been
written (each file and card is written atomically: temporary name, rename).

Waveforms: the records hold features. When they also hold the ``raw``
format, its samples are the waveforms; otherwise they are read again from the
corpus under ``audio_dir``, where the audio file of utterance ``u`` is the one
named ``u.<wav|flac|ogg|mp3>`` (the id is the file stem in the VIVOS,
LibriSpeech and manifest layouts); a kws clip is cut at the record's ``start``
exactly as the converter cut it.
"""
import dataclasses
import os
import tempfile
from typing import Dict, List, NamedTuple, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert_phase import ConverterError

from kws_tf import audio, data, inference, records, text
from kws_tf import model_dir as model_dir_lib
from kws_tf.evaluation import decoding, metrics
from kws_tf.export import qat, serving
from kws_tf.export.errors import ExportError

FORMATS = ("float32", "float16", "dynamic", "int8", "qat")
# Formats whose accuracy drop against Keras is checked.
GATED_FORMATS = ("int8", "qat")
SAVED_MODEL = "saved_model"
LATENCY_RUNS = 5


def tflite_path(out_dir: str, kind: str) -> str:
  """``<out_dir>/model_<kind>.tflite``."""
  return os.path.join(out_dir, f"model_{kind}.tflite")


class Example(NamedTuple):
  """One labelled example as the model and the exported files see it.

  ``features`` float32 ``[frames, channels]``, normalised as in training;
  ``waveform`` float32 ``[samples]``; ``label`` (kws class) or ``labels``
  (ctc character ids).
  """
  id: str
  features: np.ndarray
  waveform: np.ndarray
  label: Optional[int] = None
  labels: Optional[List[int]] = None


# ---------------------------------------------------------------- examples

def audio_index(audio_dir: str) -> Dict[str, Optional[str]]:
  """Audio file stem -> path of every audio file under ``audio_dir``.

  A stem found twice maps to None (ambiguous); ``read_waveform`` refuses it.
  """
  if not os.path.isdir(audio_dir):
    raise ExportError(f"--audio_dir {audio_dir} is not a folder")
  index: Dict[str, Optional[str]] = {}
  for root, _, names in os.walk(audio_dir):
    for name in names:
      stem, ext = os.path.splitext(name)
      if ext.lower() in inference.AUDIO_EXTENSIONS:
        index[stem] = None if stem in index else os.path.join(root, name)
  return index


def load_examples(model_dir: str, data_dir: str, split: str, limit: int,
                  audio_dir: Optional[str] = None) -> List[Example]:
  """``limit`` examples spread evenly over ``split`` (every k-th record, from the first),
  with their waveforms (module docstring).

  Raises ExportError when the records have no ``raw`` format and no
  ``audio_dir`` is given, or an example's audio cannot be found or read.
  """
  spec, metadata, parse = model_dir_lib.model_records(model_dir, data_dir)
  compression = metadata.compression
  sample_rate = metadata.sample_rate
  data.shard_paths(data_dir, spec.format, split, metadata)  # checks the split
  every = max(1, metadata.splits[split].examples // max(limit, 1))

  def spread(fmt):
    paths = data.shard_paths(data_dir, fmt, split, metadata)
    return data.records_dataset(paths, compression).shard(every, 0).take(limit)

  serialized = spread(spec.format)
  if "raw" in metadata.formats:
    raw_parse = data.make_parser(metadata, "raw", normalize=False)
    # kws raw records hold context around the clip: the model takes the clip.
    context = metadata.context_samples

    def clip(record):
      waveform = raw_parse(record)["features"].numpy()[:, 0]
      return waveform[context:len(waveform) - context]

    waveforms = (clip(r) for r in spread("raw"))
    source = None
  elif audio_dir:
    waveforms = None
    source = audio_index(audio_dir)
  else:
    raise ExportError(
        f"{data_dir} holds features but no waveforms (no 'raw' format); the parity check and "
        "int8 calibration need the audio: pass --audio_dir=<the corpus the records were made "
        "from>")
  kws = spec.task == "kws"
  extra_spec = {"utterance": tf.io.FixedLenFeature([], tf.string, b""),
                "start": tf.io.FixedLenFeature([], tf.float32, 0.0)}
  cache = {}
  examples = []
  for record in serialized:
    parsed = parse(record)
    example_id = parsed["id"].numpy().decode("utf-8")
    if waveforms is not None:
      waveform = next(waveforms)
    else:
      extra = tf.io.parse_single_example(record, extra_spec)
      utterance = extra["utterance"].numpy().decode("utf-8") if kws else example_id
      if utterance not in cache:
        cache.clear()
        cache[utterance] = read_waveform(source, utterance, audio_dir, sample_rate)
      waveform = cache[utterance]
      if kws:
        waveform = audio.cut_clip(waveform, float(extra["start"]),
                                  metadata.clip_samples, sample_rate)
    examples.append(Example(
        example_id, parsed["features"].numpy(), waveform,
        label=int(parsed["label"]) if kws else None,
        labels=None if kws else parsed["labels"].numpy().tolist()))
  if not examples:
    raise ExportError(f"split {split!r} of {data_dir} has no examples")
  return examples


def read_waveform(index: Dict[str, Optional[str]], utterance: str, audio_dir: str,
                  sample_rate: int) -> np.ndarray:
  """The audio of ``utterance`` (``audio_index``) at ``sample_rate``, as the converter read it."""
  if utterance not in index:
    raise ExportError(f"no audio file named {utterance}.<wav|flac|ogg|mp3> under {audio_dir}")
  if index[utterance] is None:
    raise ExportError(f"several audio files named {utterance}.* under {audio_dir}")
  try:
    return audio.read_audio(index[utterance], sample_rate)
  except audio.AudioError as e:
    raise ExportError(f"cannot read the audio of {utterance}: {e}") from e


# ---------------------------------------------------------------- conversion

def _write_atomically(path: str, content: bytes) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(content)
  os.replace(tmp, path)


def _in_model(tensor_name: str, model_name: str) -> bool:
  """True for tensors of the Keras model's ops (named ``<model_name>/...``) and the
  signature outputs (``StatefulPartitionedCall...``); the rest are the front end's."""
  return tensor_name.startswith((f"{model_name}/", "StatefulPartitionedCall"))


def front_end_nodes(calibrated: bytes, model_name: str) -> List[str]:
  """Tensors of a calibrated TFLite model that int8 quantization must leave float:
  those of the front end and the normalisation."""
  from ai_edge_litert.interpreter import Interpreter
  return [t["name"] for t in Interpreter(model_content=calibrated).get_tensor_details()
          if not _in_model(t["name"], model_name)]


def keep_front_end_float(quantized: bytes, float_model: bytes, model_name: str) -> bytes:
  """A dynamic-range model with the front end's weights float32 again.

  TFLite's dynamic-range conversion has no deny list: it stores every large
  constant matrix in int8, the front end's (DFT, mel, delta filters) too, and
  its hybrid kernels then quantize the power spectrum to 8 bits at run time.
  Here each int8 constant read by a front-end op takes back its float32 value
  from ``float_model`` (the same SavedModel converted as float32): the
  constant of the same shape that its dequantized values are closest to,
  within one quantization step. Those ops then run in float; the model keeps
  its int8 weights.
  """
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(quantized))
  reference = flatbuffer_utils.convert_bytearray_to_object(bytearray(float_model))
  originals = []
  for t in reference.subgraphs[0].tensors:
    data = reference.buffers[t.buffer].data
    if t.type == schema.TensorType.FLOAT32 and data is not None:
      originals.append((t, np.frombuffer(bytes(data), np.float32).reshape(t.shape)))
  graph = model.subgraphs[0]
  for op in graph.operators:
    if _in_model(graph.tensors[op.outputs[0]].name.decode("utf-8"), model_name):
      continue
    for index in op.inputs:
      tensor = graph.tensors[index] if index >= 0 else None
      if (tensor is None or tensor.type != schema.TensorType.INT8
          or model.buffers[tensor.buffer].data is None):
        continue
      q = tensor.quantization
      axis = q.quantizedDimension
      shape = [1] * len(tensor.shape)
      shape[axis] = -1
      scale = np.asarray(q.scale, np.float32).reshape(shape if len(q.scale) > 1 else [1])
      zero = np.asarray(q.zeroPoint, np.float32).reshape(scale.shape)
      values = (np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8)
                .reshape(tensor.shape).astype(np.float32) - zero) * scale
      best = min(((float(np.max(np.abs(values - w))), t, w) for t, w in originals
                  if tuple(w.shape) == tuple(values.shape)),
                 key=lambda c: c[0], default=None)
      if best is None or best[0] > float(np.max(scale)):
        raise ExportError(f"no float32 original of the front end's int8 constant "
                          f"{tensor.name.decode('utf-8')} {list(tensor.shape)}")
      _, original, weights = best
      tensor.type, tensor.quantization = schema.TensorType.FLOAT32, original.quantization
      model.buffers[tensor.buffer].data = np.ascontiguousarray(weights).view(np.uint8).ravel()
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert(saved_model_dir: str, kind: str, model_name: str = "",
            representative: Optional[Sequence[np.ndarray]] = None,
            int8_io: bool = False) -> bytes:
  """A TFLite flatbuffer of the SavedModel's serving signature.

  Args:
    saved_model_dir: a ``ServingModule`` SavedModel.
    kind: "float32", "float16", "dynamic", "int8" (full integer model, float
      front end) or "qat" (a SavedModel of a QAT model).
    model_name: the Keras model's name (int8: tells its ops from the front end's).
    representative: int8 and qat: calibration waveforms float32 ``[samples]``.
    int8_io: int8 and qat: int8 waveform input and int8 float outputs
      (``logit_frames`` stays int32) instead of float32.
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  if kind == "float32":
    return converter.convert()
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if kind == "float16":
    converter.target_spec.supported_types = [tf.float16]
    return converter.convert()
  if kind == "dynamic":
    return keep_front_end_float(converter.convert(), convert(saved_model_dir, "float32"),
                                model_name)
  if kind not in ("int8", "qat"):
    raise ValueError(f"unknown TFLite format {kind!r}, expected one of {FORMATS}")
  if not representative:
    raise ValueError(f"{kind} conversion needs representative waveforms")

  def dataset():
    for waveform in representative:
      yield {serving.WAVEFORM: np.asarray(waveform, np.float32)[np.newaxis]}

  converter.representative_dataset = dataset
  # Calibrate, then quantize the model's ops only: the same two steps as
  # converter.convert(), with the front end on the deny list (what
  # tf.lite.experimental.QuantizationDebugger does with denylisted_nodes).
  from tensorflow.lite.python import convert as lite_convert
  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  calibrated = converter.convert()
  io_type = tf.int8 if int8_io else tf.float32
  return lite_convert.mlir_quantize(
      calibrated, fully_quantize=int8_io, input_data_type=io_type, output_data_type=io_type,
      denylisted_nodes=front_end_nodes(calibrated, model_name))


# ---------------------------------------------------------------- parity

def keras_outputs(model, examples: Sequence[Example]) -> List[Dict[str, np.ndarray]]:
  """The Keras model's outputs for each example's features (batch of one)."""
  channels = examples[0].features.shape[1]

  @tf.function(input_signature=[tf.TensorSpec([1, None, channels], tf.float32),
                                tf.TensorSpec([1], tf.int32)])
  def forward(features, num_frames):
    return model({"features": features, "num_frames": num_frames}, training=False)

  outputs = []
  for example in examples:
    out = forward(example.features[np.newaxis], np.array([len(example.features)], np.int32))
    outputs.append({k: v.numpy() for k, v in out.items() if k != "projection"})
  return outputs


def score(spec: model_dir_lib.ModelSpec, examples: Sequence[Example],
          outputs: Sequence[Dict[str, np.ndarray]]) -> Dict[str, float]:
  """kws: ``accuracy``; ctc: greedy ``cer`` and ``wer``; fractions."""
  if spec.task == "kws":
    predictions = [int(np.argmax(o["logits"][0])) for o in outputs]
    return {"accuracy": float(np.mean([p == e.label for p, e in zip(predictions, examples)]))}
  vocabulary = text.Vocabulary(spec.vocabulary["symbols"])
  references = [vocabulary.decode(e.labels) for e in examples]
  hypotheses = [vocabulary.decode(decoding.greedy_decode(o["logits"], o["logit_frames"])[0])
                for o in outputs]
  rates = metrics.error_rates(references, hypotheses)
  return {"cer": rates["cer"], "wer": rates["wer"]}


def max_logit_error(reference: Sequence[Dict[str, np.ndarray]],
                    outputs: Sequence[Dict[str, np.ndarray]]) -> float:
  """Largest |logit difference| over examples (ctc: their common valid frames)."""
  worst = 0.0
  for ref, out in zip(reference, outputs):
    a, b = ref["logits"][0], out["logits"][0]
    if a.ndim == 2:
      frames = min(int(ref["logit_frames"][0]), int(out["logit_frames"][0]))
      a, b = a[:frames], b[:frames]
    worst = max(worst, float(np.max(np.abs(a - b))))
  return worst


def accuracy_drop(spec: model_dir_lib.ModelSpec, keras_metrics: Dict[str, float],
                  file_metrics: Dict[str, float]) -> float:
  """Points (percent) lost against Keras: kws accuracy, ctc CER increase."""
  if spec.task == "kws":
    return 100.0 * (keras_metrics["accuracy"] - file_metrics["accuracy"])
  return 100.0 * (file_metrics["cer"] - keras_metrics["cer"])


def parity(spec: model_dir_lib.ModelSpec, runner, examples: Sequence[Example],
           reference: Sequence[Dict[str, np.ndarray]], keras_metrics: Dict[str, float]) -> dict:
  """Parity of an exported model (``inference.TFLiteModel`` / ``SavedModel``) with Keras."""
  outputs = [runner(e.waveform) for e in examples]
  file_metrics = score(spec, examples, outputs)
  frames = [(int(r["logit_frames"][0]), int(o["logit_frames"][0]))
            for r, o in zip(reference, outputs)] if spec.task == "ctc" else []
  result = {"num_examples": len(examples),
            "max_abs_logit_error": max_logit_error(reference, outputs),
            "keras": keras_metrics, "exported": file_metrics,
            "drop_points": accuracy_drop(spec, keras_metrics, file_metrics)}
  if frames:
    result["logit_frame_mismatches"] = sum(a != b for a, b in frames)
  return result


# ---------------------------------------------------------------- model cards

def _tensor(detail: dict) -> dict:
  out = {"shape": [int(d) for d in detail["shape_signature"]],
         "dtype": np.dtype(detail["dtype"]).name}
  if detail["dtype"] == np.int8:
    scale, zero_point = detail["quantization"]
    out["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
  return out


def _labels(spec: model_dir_lib.ModelSpec) -> dict:
  if spec.task == "kws":
    return {"classes": list(spec.classes), "negative": text.NEGATIVE_LABEL}
  return {"vocabulary": list(spec.vocabulary["symbols"]),
          "blank_index": spec.vocabulary["blank_index"]}


def _window(spec: model_dir_lib.ModelSpec, front_end) -> dict:
  """Analysis window and hop of the front end, samples and seconds."""
  window = getattr(front_end, "frame_length", getattr(front_end, "fft_length", 1))
  return {"window_samples": window, "window_seconds": window / spec.sample_rate,
          "hop_samples": front_end.hop_samples, "hop_seconds": spec.frame_seconds}


def model_card(spec: model_dir_lib.ModelSpec, name: str, kind: str, path: str, front_end,
               clip_samples, inputs: dict, outputs: dict, parity_result: dict, parameters: int,
               latency_ms: Optional[float], latency_seconds: Optional[float],
               command: str, model_dir: str, checkpoint: str,
               max_accuracy_drop: Optional[float], qat_steps: Optional[int] = None) -> dict:
  """What an app needs to run an exported file, and how it was made and measured."""
  card = {
      "name": name, "file": os.path.basename(path), "format": kind, "task": spec.task,
      "model": spec.name, "role": spec.role, "labels": _labels(spec),
      "sample_rate": spec.sample_rate, **_window(spec, front_end),
      "feature_format": front_end.format, "feature_params": front_end.to_dict(),
      "normalization": "per-channel mean/std of the training data, inside the model"
                       if spec.normalization else None,
      "front_end_dtype": "float32",
      "input": inputs, "outputs": outputs,
      "parity": parity_result, "size_bytes": _size(path), "parameters": parameters,
      "latency_ms_single_thread": latency_ms, "latency_audio_seconds": latency_seconds,
      "latency_runs": LATENCY_RUNS if latency_ms is not None else None,
      "model_dir": os.path.abspath(model_dir), "checkpoint": checkpoint,
      "data_fingerprint": spec.data_fingerprint,
      "weight_quantization": spec.quantization, "command": command,
  }
  if spec.task == "kws":
    card["clip_samples"] = clip_samples
    card["clip_seconds"] = clip_samples / spec.sample_rate
  else:
    card["logit_frame_seconds"] = spec.output_frame_seconds
  if kind in GATED_FORMATS:
    card["accuracy_gate"] = {"max_drop_points": max_accuracy_drop,
                             "passed": parity_result["drop_points"] <= max_accuracy_drop}
  if kind == "qat":
    card["qat_steps"] = qat_steps
  return card


def _size(path: str) -> int:
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(root, n))
               for root, _, names in os.walk(path) for n in names)
  return os.path.getsize(path)


def card_markdown(card: dict) -> str:
  """The card as a short Markdown page."""
  p = card["parity"]
  metric = "accuracy" if card["task"] == "kws" else "cer"
  lines = [
      f"# {card['name']}: {card['model']} ({card['task']}, {card['format']})", "",
      f"- File: `{card['file']}`, {card['size_bytes']:,} bytes; {card['parameters']:,} parameters",
      f"- Input `waveform`: {card['input']['shape']} {card['input']['dtype']}"
      + (f", scale {card['input']['quantization']['scale']:.6g} zero point "
         f"{card['input']['quantization']['zero_point']}" if "quantization" in card["input"]
         else "") + f", {card['sample_rate']} Hz mono in [-1, 1]",
      "- Outputs: " + ", ".join(f"`{k}` {v['shape']} {v['dtype']}"
                                for k, v in sorted(card["outputs"].items())),
      f"- Front end (inside, {card['front_end_dtype']}): {card['feature_format']}, window "
      f"{card['window_samples']} samples ({card['window_seconds'] * 1000:g} ms), hop "
      f"{card['hop_samples']} samples ({card['hop_seconds'] * 1000:g} ms); "
      f"normalisation: {card['normalization'] or 'none'}",
  ]
  if card["task"] == "kws":
    lines.append(f"- Clip: {card['clip_samples']} samples ({card['clip_seconds']:g} s); "
                 f"classes: {', '.join(card['labels']['classes'])}")
  else:
    lines.append(f"- Vocabulary: {len(card['labels']['vocabulary'])} symbols, blank index "
                 f"{card['labels']['blank_index']}; logit frames of "
                 f"{card['logit_frame_seconds'] * 1000:g} ms")
  lines += [
      f"- Parity on {p['num_examples']} test examples: max |logit - Keras| "
      f"{p['max_abs_logit_error']:.3g}; {metric} {p['exported'][metric]:.4f} vs Keras "
      f"{p['keras'][metric]:.4f} ({p['drop_points']:+.2f} points lost)",
  ]
  if "accuracy_gate" in card:
    gate = card["accuracy_gate"]
    lines.append(f"- Accuracy gate (at most {gate['max_drop_points']:g} points lost): "
                 + ("passed" if gate["passed"] else "FAILED"))
  if card["latency_ms_single_thread"] is not None:
    lines.append(f"- Latency, one thread, median of {card['latency_runs']} runs: "
                 f"{card['latency_ms_single_thread']:.2f} ms for "
                 f"{card['latency_audio_seconds']:g} s of audio")
  if card["weight_quantization"]:
    lines.append(f"- Weights quantized in training (quantized distillation): "
                 f"{card['weight_quantization']}")
  lines += [f"- Made by: `{card['command']}`", ""]
  return "\n".join(lines)


def write_card(path_without_extension: str, card: dict) -> None:
  """``<path>.json`` and ``<path>.md``, each written atomically."""
  records.write_json(path_without_extension + ".json", card)
  _write_atomically(path_without_extension + ".md", card_markdown(card).encode("utf-8"))


# ---------------------------------------------------------------- the export

@dataclasses.dataclass
class ExportConfig:
  """Options of ``export`` (the flags of ``kws-export-tflite``).

  Fields:
    formats: TFLite formats to write, any of ``FORMATS``.
    int8_io: int8 and qat files take an int8 waveform and give int8 logits.
    num_parity: test examples of the parity check.
    num_calibration: train examples whose waveforms calibrate int8 and qat.
    max_accuracy_drop: points (percent) an int8 / qat file may lose against Keras.
    checkpoint: "best" or "last" weights.
    split: records split of the parity check.
    train_split: records split of calibration and QAT.
    audio_dir: corpus root to read waveforms from when the records hold none.
    qat_steps, qat_learning_rate, qat_batch_size: the QAT fine-tune.
    command: the command line, for the cards.
  """
  formats: Sequence[str] = ("float32", "int8")
  int8_io: bool = False
  num_parity: int = 100
  num_calibration: int = 100
  max_accuracy_drop: float = 1.0
  checkpoint: str = "best"
  split: str = "test"
  train_split: str = "train"
  audio_dir: Optional[str] = None
  qat_steps: int = 200
  qat_learning_rate: float = 1e-4
  qat_batch_size: int = 32
  seed: int = 0
  command: str = ""


def export(model_dir: str, data_dir: str, out_dir: str, config: ExportConfig,
           log=print) -> Dict[str, dict]:
  """Writes the SavedModel, the TFLite files and their cards (module docstring).

  Returns the cards by name ("saved_model", then each format). Raises
  ExportError for an impossible request (unknown format, qat of a model that
  does not support it, no waveforms) before writing anything, and after
  writing everything when an int8 / qat file failed the accuracy gate.
  """
  unknown = [f for f in config.formats if f not in FORMATS]
  if unknown:
    raise ExportError(f"unknown formats {unknown}; choose from {', '.join(FORMATS)}")
  spec = model_dir_lib.read_spec(model_dir)
  if "qat" in config.formats:
    qat.check_supported(spec)
  metadata = records.load_metadata(data_dir)
  clip = metadata.clip_samples if spec.task == "kws" else None
  model = model_dir_lib.load_trained_model(model_dir, config.checkpoint)
  examples = load_examples(model_dir, data_dir, config.split, config.num_parity,
                           config.audio_dir)
  calibration = None
  if set(config.formats) & set(GATED_FORMATS):
    calibration = [e.waveform for e in load_examples(
        model_dir, data_dir, config.train_split, config.num_calibration, config.audio_dir)]
  reference = keras_outputs(model, examples)
  keras_metrics = score(spec, examples, reference)
  log(f"Keras on {len(examples)} {config.split} examples: {keras_metrics}")

  def check(runner):
    return parity(spec, runner, examples, reference, keras_metrics)

  os.makedirs(out_dir, exist_ok=True)
  module = serving.ServingModule(model, spec, clip)
  card_fields = dict(spec=spec, front_end=module.front_end, clip_samples=clip,
                     parameters=int(model.count_params()), command=config.command,
                     model_dir=model_dir, checkpoint=config.checkpoint,
                     max_accuracy_drop=config.max_accuracy_drop)
  saved_model_dir = os.path.join(out_dir, SAVED_MODEL)
  module.save(saved_model_dir)
  runner = inference.SavedModel(saved_model_dir)
  result = check(runner)
  cards = {SAVED_MODEL: model_card(
      name=SAVED_MODEL, kind=SAVED_MODEL, path=saved_model_dir,
      inputs={"shape": [1, -1 if clip is None else clip], "dtype": "float32"},
      outputs=runner.output_specs(), parity_result=result, latency_ms=None,
      latency_seconds=None, **card_fields)}
  write_card(saved_model_dir, cards[SAVED_MODEL])
  log(f"{saved_model_dir}: max |logit error| {result['max_abs_logit_error']:.3g}")

  failures = []
  with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
    for kind in config.formats:
      source, model_name = saved_model_dir, model.name
      if kind == "qat":
        qat_model = qat.fine_tune(
            model, spec, model_dir, data_dir, config.train_split, config.qat_steps,
            config.qat_learning_rate, config.qat_batch_size, config.seed, log=log)
        source, model_name = os.path.join(scratch, "qat_saved_model"), qat_model.name
        serving.ServingModule(qat_model, spec, clip).save(source)
      path = tflite_path(out_dir, kind)
      try:
        content = convert(source, kind, model_name, calibration,
                          config.int8_io and kind in GATED_FORMATS)
      except ConverterError as e:
        first = next((line for line in str(e).splitlines() if "error" in line), str(e))
        raise ExportError(f"the TFLite converter failed on the {kind} file of model "
                          f"{spec.name!r}: {first.strip()}") from e
      _write_atomically(path, content)
      runner = inference.TFLiteModel(path)
      result = check(runner)
      latency = inference.median_latency_ms(inference.TFLiteModel(path, num_threads=1),
                                            examples[0].waveform, LATENCY_RUNS)
      card = cards[kind] = model_card(
          name=os.path.splitext(os.path.basename(path))[0], kind=kind, path=path,
          inputs=_tensor(runner.input_detail),
          outputs={k: _tensor(v) for k, v in runner.output_details.items()},
          parity_result=result, latency_ms=latency,
          latency_seconds=len(examples[0].waveform) / spec.sample_rate,
          qat_steps=config.qat_steps if kind == "qat" else None, **card_fields)
      write_card(os.path.splitext(path)[0], card)
      log(f"{path}: {card['size_bytes']:,} bytes, max |logit error| "
          f"{result['max_abs_logit_error']:.3g}, {result['exported']} vs Keras "
          f"{keras_metrics} ({result['drop_points']:+.2f} points), {latency:.2f} ms")
      if kind in GATED_FORMATS and not card["accuracy_gate"]["passed"]:
        failures.append(f"{path} loses {result['drop_points']:.2f} points against Keras "
                        f"({result['exported']} vs {keras_metrics} on {len(examples)} "
                        f"{config.split} examples), more than --max_accuracy_drop="
                        f"{config.max_accuracy_drop:g}")
  if failures:
    raise ExportError("accuracy gate failed: " + "; ".join(failures))
  return cards
