"""The model card of an exported file: ``<name>.json`` and ``<name>.md`` next to it.

A card says what an app needs to run the file (task, labels, sample rate,
window and hop of the front end, input and output shapes and dtypes with their
int8 quantization, kws clip length, ctc logit frame length) and how it was
made and measured (parity with Keras, size, parameters, single-thread latency,
model dir, checkpoint, data fingerprint, command). ``kws_tf.inference``
reads the JSON.
"""
import os
from typing import Optional

import numpy as np

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


def model_card(spec: model_dir_lib.ModelSpec, name: str, kind: str, path: str, front_end,
               clip_samples: Optional[int], inputs: dict, outputs: dict, parity_result: dict,
               parameters: int, command: str, model_dir: str, checkpoint: str,
               latency_ms: Optional[float] = None, latency_seconds: Optional[float] = None,
               latency_runs: Optional[int] = None, max_accuracy_drop: Optional[float] = None,
               qat_steps: Optional[int] = None) -> dict:
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
    qat_steps: qat files: the steps of the quantization-aware fine-tune.
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
      "data_fingerprint": spec.data_fingerprint,
      "weight_quantization": spec.quantization, "command": command,
  }
  if spec.task == "kws":
    card["clip_samples"] = clip_samples
    card["clip_seconds"] = clip_samples / spec.sample_rate
  else:
    card["logit_frame_seconds"] = spec.output_frame_seconds
  if max_accuracy_drop is not None:
    card["accuracy_gate"] = {"max_drop_points": max_accuracy_drop,
                             "passed": parity_result["drop_points"] <= max_accuracy_drop}
  if kind == "qat":
    card["qat_steps"] = qat_steps
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
  if card["weight_quantization"]:
    lines.append(f"- Weights quantized in training (quantized distillation): "
                 f"{card['weight_quantization']}")
  lines += [f"- Made by: `{card['command']}`", ""]
  return "\n".join(lines)


def write_card(path_without_extension: str, card: dict) -> None:
  """``<path>.json`` and ``<path>.md``, each written atomically."""
  records.write_json(path_without_extension + ".json", card)
  records.write_bytes(path_without_extension + ".md", card_markdown(card).encode("utf-8"))
