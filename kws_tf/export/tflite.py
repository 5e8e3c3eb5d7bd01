"""Export: SavedModel and TFLite files with the front end inside, parity check, model cards.

``export(model_dir, data_dir, out_dir, config)`` writes, into ``out_dir``:

  saved_model/           the ``serving.ServingModule`` of the trained model
                         (waveform in, outputs out; signature ``serving_default``)
  model_<format>.tflite  one per format of ``config.formats``
                         (``kws_tf.export.convert``); qat converts a copy of
                         the model fine-tuned by ``kws_tf.export.qat``;
                         stream_float32 / stream_int8 take audio in hops
                         (``kws_tf.export.streaming``)
  <name>.json, <name>.md the model card of each (``kws_tf.export.card``), next
                         to it: saved_model.json, model_<format>.json
  model_<format>_mediapipe.tflite
                         kws: the file for MediaPipe's AudioClassifier (the
                         ``probabilities`` output only); every kws TFLite file
                         carries TFLite Metadata (``kws_tf.export.metadata``)

Parity: ``num_parity`` examples of ``split`` (``kws_tf.export.examples``) go
through the Keras model and through every exported file
(``kws_tf.export.parity``); each card holds the maximum absolute logit
difference and the accuracy (kws) or CER (ctc) of both. int8 and qat are
calibrated on ``num_calibration`` waveforms of ``train_split``.

The accuracy gate: an int8 or qat file that loses more than
``max_accuracy_drop`` points (kws: accuracy, ctc: CER, in percent) against
Keras is not written under its name: it goes to
``model_<format>.rejected.tflite`` with its card (for inspection), any
``model_<format>.tflite`` and card of an earlier export are removed, and
``export`` raises ``ExportError`` naming the file and the numbers after every
format has been tried. Each file and card is written atomically (temporary
name, rename).
"""
import dataclasses
import os
import tempfile
from typing import Dict, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from tensorflow.lite.python.convert_phase import ConverterError

from kws_tf import inference, records
from kws_tf import model_dir as model_dir_lib
from kws_tf.export import card as card_lib
from kws_tf.export import convert as convert_lib
from kws_tf.export import examples as examples_lib
from kws_tf.export import metadata as metadata_lib
from kws_tf.export import parity as parity_lib
from kws_tf.export import files, qat, serving, streaming
from kws_tf.export.errors import ExportError

# Formats whose accuracy drop against Keras is checked.
GATED_FORMATS = ("int8", "qat", "stream_int8")
SAVED_MODEL = "saved_model"
LATENCY_RUNS = 5


@dataclasses.dataclass
class ExportConfig:
  """Options of ``export`` (the flags of ``kws-export-tflite``).

  Fields:
    formats: TFLite formats to write, any of ``convert.FORMATS`` and ``streaming.FORMATS``.
    int8_io: int8 and qat files take an int8 waveform and give int8 logits.
    num_parity: test examples of the parity check.
    num_calibration: train examples whose waveforms calibrate int8 and qat.
    max_accuracy_drop: points (percent) an int8 / qat file may lose against Keras.
    checkpoint: "best" or "last" weights.
    split: records split of the parity check.
    train_split: records split of calibration and QAT.
    audio_dir: corpus root to read waveforms from when the records hold none.
    qat_steps, qat_learning_rate, qat_batch_size, seed: the QAT fine-tune.
    command: the command line, for the cards.
    stream_hop_seconds: audio per call of the streaming files.
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
  stream_hop_seconds: float = 0.1


def export(model_dir: str, data_dir: str, out_dir: str, config: ExportConfig,
           log=print) -> Dict[str, dict]:
  """Writes the SavedModel, the TFLite files and their cards (module docstring).

  Returns the cards by name ("saved_model", then each format). Raises
  ExportError for an impossible request (unknown format, qat of a model that
  does not support it, no waveforms) before writing anything, and after
  trying every format when an int8 / qat file failed the accuracy gate
  (module docstring).
  """
  known = convert_lib.FORMATS + streaming.FORMATS
  unknown = [f for f in config.formats if f not in known]
  if unknown:
    raise ExportError(f"unknown formats {unknown}; choose from {', '.join(known)}")
  spec = model_dir_lib.read_spec(model_dir)
  if "qat" in config.formats:
    qat.check_supported(spec)
  metadata = records.load_metadata(data_dir)
  clip = metadata.clip_samples if spec.task == "kws" else None
  stream_kinds = [k for k in config.formats if k in streaming.FORMATS]
  if stream_kinds:
    streaming.check_supported(spec, clip, config.stream_hop_seconds)
  model = model_dir_lib.load_trained_model(model_dir, config.checkpoint)
  examples = examples_lib.load_examples(model_dir, data_dir, config.split, config.num_parity,
                                        config.audio_dir)
  calibration = None
  if set(config.formats) & set(GATED_FORMATS):
    calibration = [e.waveform for e in examples_lib.load_examples(
        model_dir, data_dir, config.train_split, config.num_calibration, config.audio_dir)]
  reference = parity_lib.keras_outputs(model, examples)
  keras_metrics = parity_lib.score(spec, examples, reference)
  log(f"Keras on {len(examples)} {config.split} examples: {keras_metrics}")

  def check(runner):
    return parity_lib.parity(spec, runner, examples, reference, keras_metrics)

  os.makedirs(out_dir, exist_ok=True)
  module = serving.ServingModule(model, spec, clip)
  card_fields = dict(spec=spec, front_end=module.front_end, clip_samples=clip,
                     parameters=int(model.count_params()), command=config.command,
                     model_dir=model_dir, checkpoint=config.checkpoint,
                     trained=card_lib.training(model_dir, spec),
                     receptive_field=(serving.receptive_field(module, spec)
                                      if spec.task == "ctc" else None))
  saved_model_dir = os.path.join(out_dir, SAVED_MODEL)
  module.save(saved_model_dir)
  runner = inference.SavedModel(saved_model_dir)
  result = check(runner)
  cards = {SAVED_MODEL: card_lib.model_card(
      name=SAVED_MODEL, kind=SAVED_MODEL, path=saved_model_dir,
      inputs={"shape": [1, -1 if clip is None else clip], "dtype": "float32"},
      outputs=runner.output_specs(), parity_result=result,
      weights=card_lib.stored_weights([(w.name, w.numpy()) for w in model.weights
                                       if len(w.shape) >= 2]), **card_fields)}
  card_lib.write_card(saved_model_dir, cards[SAVED_MODEL])
  log(f"{saved_model_dir}: max |logit error| {result['max_abs_logit_error']:.3g}")

  failures = []
  with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
    for kind in (k for k in config.formats if k not in stream_kinds):
      gated = kind in GATED_FORMATS
      source, model_name = saved_model_dir, model.name
      fine_tune = None
      if kind == "qat":
        qat_model = qat.fine_tune(
            model, spec, model_dir, data_dir, config.train_split, config.qat_steps,
            config.qat_learning_rate, config.qat_batch_size, config.seed, log=log)
        source, model_name = os.path.join(scratch, "qat_saved_model"), qat_model.name
        serving.ServingModule(qat_model, spec, clip).save(source)
        fine_tune = {"steps": config.qat_steps, "learning_rate": config.qat_learning_rate,
                     "batch_size": config.qat_batch_size}
      try:
        content = convert_lib.convert(source, kind, model_name, calibration,
                                      config.int8_io and gated)
      except ConverterError as e:
        first = next((line for line in str(e).splitlines() if "error" in line), str(e))
        raise ExportError(f"the TFLite converter failed on the {kind} file of model "
                          f"{spec.name!r}: {first.strip()}") from e
      if spec.task == "kws":
        content = metadata_lib.with_metadata(content, spec, kind, clip)
      # Checked under a scratch name; moved to its own name, or to the rejected
      # one when it fails the gate.
      checked = os.path.join(scratch, f"model_{kind}.tflite")
      records.write_bytes(checked, content)
      result = check(inference.TFLiteModel(checked))
      passed = not gated or result["drop_points"] <= config.max_accuracy_drop
      path = files.place(checked, out_dir, kind, passed)
      if not passed:  # and the MediaPipe variant of an earlier, passing file
        files.remove_file_and_card(metadata_lib.mediapipe_path(files.tflite_path(out_dir, kind)))
      runner = inference.TFLiteModel(path)
      latency = inference.median_latency_ms(inference.TFLiteModel(path, num_threads=1),
                                            examples[0].waveform, LATENCY_RUNS)
      card = cards[kind] = card_lib.model_card(
          name=os.path.splitext(os.path.basename(path))[0], kind=kind, path=path,
          inputs=card_lib.tensor(runner.input_detail),
          outputs={k: card_lib.tensor(v) for k, v in runner.output_details.items()},
          parity_result=result, latency_ms=latency,
          latency_seconds=len(examples[0].waveform) / spec.sample_rate,
          latency_runs=LATENCY_RUNS,
          max_accuracy_drop=config.max_accuracy_drop if gated else None,
          weights=card_lib.stored_weights(card_lib.tflite_weights(content, model_name)),
          fine_tune=fine_tune, **card_fields)
      card_lib.write_card(os.path.splitext(path)[0], card)
      log(f"{path}: {card['size_bytes']:,} bytes, max |logit error| "
          f"{result['max_abs_logit_error']:.3g}, {result['exported']} vs Keras "
          f"{keras_metrics} ({result['drop_points']:+.2f} points), {latency:.2f} ms")
      if spec.task == "kws" and passed:
        metadata_lib.write_mediapipe_variant(path, card, log)
      if not passed:
        failures.append(f"{files.tflite_path(out_dir, kind)} loses {result['drop_points']:.2f} points "
                        f"against Keras ({result['exported']} vs {keras_metrics} on "
                        f"{len(examples)} {config.split} examples), more than "
                        f"--max_accuracy_drop={config.max_accuracy_drop:g}; not written, kept "
                        f"as {path} for inspection")
    if stream_kinds:
      stream_cards, stream_failures = streaming.export(
          stream_kinds, model, spec, clip, config.stream_hop_seconds, out_dir, scratch,
          calibration, check, card_fields, config.max_accuracy_drop, log)
      cards.update(stream_cards)
      failures += stream_failures
  if failures:
    raise ExportError("accuracy gate failed: " + "; ".join(failures))
  return cards
