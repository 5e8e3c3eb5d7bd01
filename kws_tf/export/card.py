"""The model card of an exported file: ``<name>.json`` and ``<name>.md`` next to it.

A card says what an app needs to run the file (task, labels, sample rate,
window and hop of the front end, input and output shapes and dtypes with their
int8 quantization, kws clip length, ctc logit frame length and receptive
field) and how it was made and measured (parity with Keras, size, parameters,
the weights as stored: dtype and distinct levels per tensor, single-thread
latency, what trained the weights: the recipe's loss and, for qat, the
fine-tune; model dir, checkpoint, data fingerprint, command). A streaming
file's card also has a ``streaming`` section (``kws_tf.export.streaming``),
and, once ``kws-evaluate --always_on_model`` measured it, an ``always_on``
section (``kws_tf.evaluation.always_on.card_section``): the detection
threshold for a target false-alarm rate, which ``kws-infer`` then uses.
``kws_tf.inference`` reads the JSON.
"""
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from kws_tf import config as config_lib
from kws_tf import model_dir as model_dir_lib
from kws_tf import records, text


def tensor(detail: dict) -> dict:
  """``{"shape", "dtype"}`` of a TFLite tensor detail (-1 for a dynamic size); int8
  tensors also ``quantization`` ``{"scale", "zero_point"}``."""
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


def _size(path: str) -> int:
  """Bytes of a file, or of every file under a folder."""
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(root, n))
               for root, _, names in os.walk(path) for n in names)
  return os.path.getsize(path)


def stored_weights(tensors: Sequence[Tuple[str, np.ndarray]]) -> Optional[dict]:
  """How the weight tensors of a file are stored: ``tensors`` are (name, values
  as stored, e.g. int8) of each weight matrix or kernel (2 or more axes).

  Returns ``tensors`` (their count), ``dtypes`` (dtype name -> tensors),
  ``bits_per_value`` (the widest dtype's bits) and ``distinct_levels_per_tensor``
  ``{"min", "median", "max"}``: the number of different values one tensor
  holds; None without tensors.
  """
  if not tensors:
    return None
  dtypes: Dict[str, int] = {}
  levels = []
  for _, values in tensors:
    dtypes[values.dtype.name] = dtypes.get(values.dtype.name, 0) + 1
    levels.append(len(np.unique(values)))
  return {"tensors": len(tensors), "dtypes": dtypes,
          "bits_per_value": max(np.dtype(d).itemsize * 8 for d in dtypes),
          "distinct_levels_per_tensor": {"min": int(np.min(levels)),
                                         "median": float(np.median(levels)),
                                         "max": int(np.max(levels))}}


def tflite_weights(content: bytes, model_name: str) -> list:
  """(name, stored values) of the weight tensors (2 or more axes) of a TFLite
  file's model ops (``convert.in_model``), in their stored dtype."""
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils
  from kws_tf.export.convert import in_model
  types = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
           schema.TensorType.INT8: np.int8}
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
  out = []
  for t in model.subgraphs[0].tensors:
    data = model.buffers[t.buffer].data
    name = t.name.decode("utf-8")
    if (data is not None and t.type in types and t.shape is not None and len(t.shape) >= 2
        and in_model(name, model_name)):
      out.append((name, np.frombuffer(bytes(data), types[t.type]).reshape(t.shape)))
  return out


def _hard_loss(task: str) -> str:
  return "cross-entropy on the labels" if task == "kws" else "CTC on the transcripts"


def training(model_dir: str, spec: model_dir_lib.ModelSpec) -> Optional[dict]:
  """What trained the weights of ``model_dir``, from its ``config.yaml``: ``mode``,
  ``steps`` and ``loss`` (the objective with its weights, as
  ``kws_tf.distill.objectives`` computes it); ``weight_quantization`` for
  quantized distillation, ``fitnet`` for FitNets. None without a config.yaml;
  ``{"unknown": <why>}`` when it cannot be read as a recipe of this version."""
  path = os.path.join(model_dir, "config.yaml")
  if not os.path.exists(path):
    return None
  try:
    config = config_lib.load(path)
  except config_lib.ConfigError as e:
    return {"unknown": str(e)}
  hard = _hard_loss(spec.task)
  d = config.distill
  kd = (f"T^2 * KL(teacher_T || student_T){'' if spec.task == 'kws' else ' per frame'} "
        f"at T = {d.temperature:g}")
  feature = f" + {d.feature_weight:g} * feature MSE" if d.feature_weight > 0 else ""
  out = {"mode": config.mode, "steps": config.train.steps}
  if config.mode == "standard":
    out["loss"] = hard
  elif config.mode in ("distill", "quantized_distill"):
    out["loss"] = f"{d.hard_weight:g} * {hard} + {d.alpha:g} * {kd}{feature}"
  elif config.mode == "fitnet":
    f = config.fitnet
    out["loss"] = (f"{d.hard_weight:g} * {hard} + lambda * {d.alpha:g} * {kd}{feature}, "
                   f"lambda from {f.kd_weight_start:g} to {f.kd_weight_end:g} over the run")
    out["fitnet"] = {"hint_steps": f.hint_steps, "kd_weight_start": f.kd_weight_start,
                     "kd_weight_end": f.kd_weight_end, "alpha": d.alpha,
                     "hard_weight": d.hard_weight, "temperature": d.temperature}
  if config.mode == "quantized_distill":
    out["weight_quantization"] = spec.quantization
  return out


def model_card(spec: model_dir_lib.ModelSpec, name: str, kind: str, path: str, front_end,
               clip_samples: Optional[int], inputs: dict, outputs: dict, parity_result: dict,
               parameters: int, command: str, model_dir: str, checkpoint: str,
               latency_ms: Optional[float] = None, latency_seconds: Optional[float] = None,
               latency_runs: Optional[int] = None, max_accuracy_drop: Optional[float] = None,
               weights: Optional[dict] = None, trained: Optional[dict] = None,
               fine_tune: Optional[dict] = None,
               receptive_field: Optional[dict] = None) -> dict:
  """The card of one exported file or folder ``path``.

  Args:
    name, kind: the card's name and the file's format ("saved_model" or a TFLite format).
    front_end: the ``kws_tf.features`` config inside the file.
    clip_samples: kws: samples of the fixed input; ctc: None.
    inputs, outputs: ``{"shape", "dtype"}`` of the waveform input and of each output.
    parity_result: ``kws_tf.export.parity.parity`` of the file.
    latency_ms: median single-thread latency over ``latency_runs`` calls on
      ``latency_seconds`` of audio; None when not measured.
    max_accuracy_drop: the accuracy gate of the file (points), None when ungated.
    weights: ``stored_weights`` of the file.
    trained: ``training`` of the model dir.
    fine_tune: qat files: ``steps``, ``learning_rate``, ``batch_size`` of the
      quantization-aware fine-tune (``kws_tf.export.qat``).
    receptive_field: ctc: ``serving.receptive_field`` (None: the whole input).
  """
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
      "latency_runs": latency_runs if latency_ms is not None else None,
      "model_dir": os.path.abspath(model_dir), "checkpoint": checkpoint,
      "data_fingerprint": spec.data_fingerprint, "stored_weights": weights,
      "training": trained, "command": command,
      # The grid the weights were trained on; a qat fine-tune moves them off it.
      "weight_quantization": spec.quantization if kind != "qat" else None,
  }
  if spec.task == "kws":
    card["clip_samples"] = clip_samples
    card["clip_seconds"] = clip_samples / spec.sample_rate
  else:
    card["logit_frame_seconds"] = spec.output_frame_seconds
    card["receptive_field"] = receptive_field
  if max_accuracy_drop is not None:
    card["accuracy_gate"] = {"max_drop_points": max_accuracy_drop,
                             "passed": parity_result["drop_points"] <= max_accuracy_drop}
  if kind == "qat":
    card["qat_steps"] = fine_tune["steps"]
    card["fine_tune"] = dict(
        fine_tune, method="quantization-aware training: 8-bit fake quantization of weights "
                          "and activations", loss=f"{_hard_loss(spec.task)} only, no teacher",
        trained_grid_bits=spec.quantization["bits"] if spec.quantization else None)
  return card


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
  stored = card.get("stored_weights")  # absent from cards of earlier exports
  if stored:
    levels = stored["distinct_levels_per_tensor"]
    lines.append(f"- Weights as stored: {stored['tensors']} weight tensors, "
                 + ", ".join(f"{n} {d}" for d, n in sorted(stored["dtypes"].items()))
                 + f" ({stored['bits_per_value']} bits per value); {levels['min']} to "
                 f"{levels['max']} distinct levels per tensor (median {levels['median']:g})")
  trained = card.get("training")
  if trained and "unknown" in trained:
    lines.append(f"- Trained: unknown ({trained['unknown']})")
  elif trained:
    lines.append(f"- Trained: mode {trained['mode']}, {trained['steps']} steps; loss "
                 f"{trained['loss']}")
  grid = card["weight_quantization"]
  if grid:
    bits = stored["bits_per_value"] if stored else 32
    lines.append(f"- Quantized distillation trained the weights on a {grid['bits']}-bit grid "
                 f"(buckets of {grid['bucket_size']}); this file stores them as {bits}-bit "
                 f"values, not {grid['bits']}-bit packed ones (levels per tensor above): the "
                 f"file is the size of {bits}-bit weights")
  if "fine_tune" in card:
    tune = card["fine_tune"]
    lines.append(f"- Fine-tuned after training: {tune['steps']} steps of {tune['method']}, "
                 f"loss {tune['loss']} (learning rate {tune['learning_rate']:g}, batch "
                 f"{tune['batch_size']})"
                 + (f"; it moves the weights off the {tune['trained_grid_bits']}-bit grid of "
                    "quantized distillation" if tune["trained_grid_bits"] else ""))
  if card.get("receptive_field"):
    field = card["receptive_field"]
    lines.append(f"- Receptive field: logit frame j (centred on sample j * "
                 f"{field['logit_hop_samples']}) reads {field['left_samples']} samples before "
                 f"and {field['right_samples']} after its centre")
  elif card["task"] == "ctc":
    lines.append("- Receptive field: the whole input (each logit depends on every sample)")
  lines += [f"- Made by: `{card['command']}`"]
  if "streaming" in card:
    s = card["streaming"]
    lines += [
        f"- Streaming: {s['hop_samples']} samples ({s['hop_seconds'] * 1000:g} ms) per call; "
        f"posteriors of the last {s['clip_samples']} samples every call, exact from call "
        f"{s['calls_per_window']} on" + (f"; each call computes {s['computes']}"
                                         if "computes" in s else ""),
        "- State (feed each `next_state_<name>` back as `state_<name>`): "
        + ", ".join(f"`{k}` {v['dtype']} {v['shape']} starting at " + (
            f"{v['initial']:g}" if isinstance(v["initial"], (int, float)) else
            "per-channel values (`initial`)")
                    for k, v in s["state"].items()),
        f"- Semantics: {s['semantics']}"]
  if card.get("always_on"):
    a = card["always_on"]
    rates = ", ".join(f"{'-' if frr is None else format(100 * frr, '.1f') + ' %'} at {rate}/h"
                      for rate, frr in a["frr_at_false_alarms_per_hour"].items())
    lines.append(
        f"- Always on ({a['hours']:.2f} h of {a['set']}, {a['occurrences']} keywords; "
        f"posteriors averaged over {a['smooth_seconds']:g} s, {a['refractory_seconds']:g} s "
        f"refractory): false rejections {rates}; "
        + (f"threshold {a['threshold']:g} for at most {a['target_false_alarms_per_hour']:g} "
           f"false alarm(s) per hour ({a['false_alarms_per_hour']:.2f}/h, "
           f"{100 * a['frr']:.1f} % missed" + (
               f", median delay {a['median_delay_ms']:.0f} ms after the keyword's end)"
               if a["median_delay_ms"] is not None else ")")
           if a["threshold"] is not None else
           f"no threshold reaches {a['target_false_alarms_per_hour']:g} false alarm(s) per "
           "hour"))
  lines.append("")
  return "\n".join(lines)


def write_card(path_without_extension: str, card: dict) -> None:
  """``<path>.json`` and ``<path>.md``, each written atomically."""
  records.write_json(path_without_extension + ".json", card)
  records.write_bytes(path_without_extension + ".md", card_markdown(card).encode("utf-8"))
