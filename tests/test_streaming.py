"""Streaming TFLite files: audio in hops, the posteriors of the last clip every hop."""
import json
import os

import numpy as np
import pytest

import kws_tf  # noqa: F401
from ai_edge_litert.interpreter import Interpreter

from conftest import run_module
from kws_tf import config as config_lib
from kws_tf import inference
from kws_tf import model_dir as model_dir_lib
from kws_tf.export import convert, serving, streaming, tflite
from kws_tf.training import loop

CLIP = 16000
# The pipeline's student front end (configs/records_kws.yaml): 20 ms frames, no overlap.
PHONE_MFCC = {"format": "mfcc", "frame_length": 320, "fft_length": 320, "frame_step": 320,
              "upper_edge_hertz": 4000, "dft": "matmul"}
# The converter's default: 32 ms frames every 10 ms.
DEFAULT_MFCC = {"format": "mfcc"}
FLOAT_TOLERANCE = 1e-4


def _spec(name, params, feature_params):
  rng = np.random.RandomState(1)
  return model_dir_lib.ModelSpec(
      name=name, task="kws", role="student", num_channels=39, num_classes=3, projection_dim=0,
      params=params, format="mfcc", feature_params=feature_params,
      normalization={"mean": (rng.randn(39) * 5).tolist(),
                     "std": rng.uniform(1.0, 10.0, 39).tolist()},
      data_fingerprint="", classes=["a", "b", "negative"])


def _random_model(spec, waveform):
  """The model of ``spec``, untrained, with the batch-norm statistics of its
  activations on windows of ``waveform`` (so every layer passes a signal on,
  as in a trained model)."""
  import tensorflow as tf
  import tf_keras as keras
  keras.utils.set_random_seed(0)  # the same weights every run, so the outcome does not vary
  model = model_dir_lib.build_model(spec)
  front = serving.ServingModule(model, spec, CLIP)
  inputs = [front.model_inputs(waveform[np.newaxis, i:i + CLIP])
            for i in range(0, len(waveform) - CLIP + 1, 2000)]
  inputs = {"features": tf.concat([x["features"] for x in inputs], 0),
            "num_frames": tf.concat([x["num_frames"] for x in inputs], 0)}
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      x = keras.Model(model.inputs, layer.input)(inputs, training=False).numpy()
      gamma, beta, _, _ = layer.get_weights()
      layer.set_weights([gamma, beta, x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)) + 1e-3])
  return model


def _stream_audio(seconds=2.5, seed=0):
  """Digital silence, then tone bursts in noise at changing levels: windows whose
  top_db clamp is and is not active."""
  rng = np.random.RandomState(seed)
  t = np.arange(int(seconds * 16000)) / 16000
  bursts = np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t)) * t) * (
      np.sin(2 * np.pi * 2.3 * t) > 0.3)
  waveform = 0.4 * bursts + 0.02 * rng.randn(len(t)) * (1 + np.sin(2 * np.pi * 0.4 * t))
  waveform[:6000] = 0.0
  return waveform.astype(np.float32)


def _files(spec, model, hop, kinds, tmp_path, calibration=()):
  """``{kind: path}`` of the non-streaming and streaming files of ``model``."""
  serving_dir, stream_dir = str(tmp_path / "serving"), str(tmp_path / "stream")
  serving.ServingModule(model, spec, CLIP).save(serving_dir)
  module = streaming.StreamingModule(model, spec, CLIP, hop)
  module.save(stream_dir)
  paths = {}
  for kind in kinds:
    if kind in streaming.FORMATS:
      representative = [module.stream(c)[-1] for c in calibration] if "int8" in kind else None
      content = streaming.convert(stream_dir, kind, model.name, representative)
    else:
      content = convert.convert(serving_dir, kind, model.name, list(calibration))
    paths[kind] = str(tmp_path / f"model_{kind}.tflite")
    with open(paths[kind], "wb") as f:
      f.write(content)
  return paths, streaming.streaming_card(module.layout, 16000)


def _compare(path, card, window_path, waveform, stream=True):
  """Per call of the streaming file ``path`` (or, ``stream`` False, of the
  non-streaming file ``path`` on the call's window): its outputs, and those of
  the non-streaming file ``window_path`` on the call's window, the last clip of
  the zero-prefixed audio."""
  model = (inference.StreamingTFLiteModel(path, card) if stream
           else inference.TFLiteModel(path))
  window = inference.TFLiteModel(window_path)
  hop = card["hop_samples"]
  padded = np.concatenate([np.zeros(CLIP, np.float32), waveform])
  got, expected = [], []
  for end in range(hop, len(waveform) + 1, hop):
    got.append(model.step(waveform[end - hop:end]) if stream else model(padded[end:end + CLIP]))
    expected.append(window(padded[end:end + CLIP]))
  return got, expected


@pytest.mark.parametrize("name,params,feature_params,hop", [
    ("wav2letter_kws_tiny", {}, PHONE_MFCC, 320),
    ("wav2letter_kws_tiny", {}, DEFAULT_MFCC, 1600),
    ("mobilenet_v3_small", {"alpha": 0.25}, PHONE_MFCC, 1600),
], ids=["wav2letter-phone-20ms", "wav2letter-default-100ms", "mobilenet-phone-100ms"])
def test_stream_float32_equals_the_non_streaming_file_on_every_window(
    name, params, feature_params, hop, tmp_path):
  spec = _spec(name, params, feature_params)
  waveform = _stream_audio()
  model = _random_model(spec, waveform)
  paths, card = _files(spec, model, hop, ("float32", "stream_float32"), tmp_path)
  got, expected = _compare(paths["stream_float32"], card, paths["float32"], waveform)
  # Every call from the first full window on, and the calls before it against the
  # zero-prefixed window the card describes.
  assert len(got) == len(waveform) // hop and card["calls_per_window"] == CLIP // hop
  for key in ("probabilities", "logits"):
    errors = [np.max(np.abs(g[key] - e[key])) for g, e in zip(got, expected)]
    assert max(errors) < FLOAT_TOLERANCE, (key, int(np.argmax(errors)))
  # Not a constant model: the windows' posteriors differ.
  probabilities = np.concatenate([e["probabilities"] for e in expected])
  assert np.ptp(probabilities, axis=0).max() > 0.05


@pytest.mark.parametrize("name,params", [
    ("wav2letter_kws_tiny", {}), ("mobilenet_v3_small", {"alpha": 0.25, "minimalistic": True})])
def test_stream_int8_matches_the_int8_file_on_every_full_window(name, params, tmp_path):
  spec = _spec(name, params, PHONE_MFCC)
  waveform = _stream_audio(seconds=3.0, seed=1)
  model = _random_model(spec, waveform)
  calibration = [_stream_audio(seconds=1.0, seed=s) for s in range(2, 10)]
  calibration += [waveform[i:i + CLIP] for i in range(0, len(waveform) - CLIP + 1, 4000)]
  paths, card = _files(spec, model, 1600, ("int8", "float32", "stream_int8"), tmp_path,
                       calibration)
  got, int8 = _compare(paths["stream_int8"], card, paths["int8"], waveform)
  int8_file, exact = _compare(paths["int8"], card, paths["float32"], waveform, stream=False)
  full = slice(card["calls_per_window"] - 1, None)

  def error(outputs, reference):
    return max(np.max(np.abs(o["probabilities"] - r["probabilities"]))
               for o, r in zip(outputs[full], reference[full]))

  # The same network calibrated on the same windows: a few output rounding steps
  # (1/256) apart at most, and as close to float32 as the int8 file.
  assert error(got, int8) <= 0.02
  assert error(got, exact) <= error(int8_file, exact) + 0.02
  # The network is int8; the front end, its state and the normalisation float32.
  interpreter = Interpreter(model_path=paths["stream_int8"])
  dtypes = {t["name"]: t["dtype"] for t in interpreter.get_tensor_details()}
  in_model = [d for n, d in dtypes.items() if n.startswith(model.name + "/")]
  assert sum(d == np.int8 for d in in_model) >= 10
  assert all(d in (np.int8, np.int32) for d in in_model)
  front_end = [d for n, d in dtypes.items() if n.startswith(serving.FRONT_END_SCOPE + "/")]
  assert front_end and all(d != np.int8 for d in front_end)
  runner = Interpreter(model_path=paths["stream_int8"]).get_signature_runner()
  for name_, detail in {**runner.get_input_details(), **runner.get_output_details()}.items():
    assert detail["dtype"] == np.float32, name_


def test_layout_of_the_phone_front_end_at_100_ms():
  layout = streaming.StreamLayout(serving.export_front_end(PHONE_MFCC), CLIP, 1600)
  # 51 frames: frame 0 and frame 50 read reflected samples, frames 1-49 do not.
  assert (layout.frames, layout.first_inner, layout.last_inner) == (51, 1, 49)
  assert layout.hop_frames == 5 and layout.calls_per_window == 10
  assert layout.state_shapes() == {"samples": (1, 160), "log_mel": (1, 44, 40),
                                   "left_edges": (1, 9, 1, 40)}
  state = layout.initial_state()
  assert np.all(state["samples"] == 0) and np.all(state["log_mel"] == streaming.SILENCE_DB)
  # Each call computes 1 left, 5 new and 1 right frame from its last 1760 samples.
  indices = layout.frame_indices()
  assert indices.shape == (7, 320)
  assert indices.min() == 0 and indices.max() == 160 + 1600 - 1


@pytest.mark.parametrize("feature_params,hop,message", [
    (PHONE_MFCC, 480, "multiple of the front end's frame step"),
    (PHONE_MFCC, 1280, "divides the clip"),
    (PHONE_MFCC, 16000, "longer than the window's 49 frames without reflected samples"),
    ({"format": "logmel"}, 1600, "needs an mfcc front end"),
])
def test_layout_refuses_hops_and_front_ends_it_cannot_stream(feature_params, hop, message):
  with pytest.raises(ValueError, match=message):
    streaming.StreamLayout(serving.export_front_end(feature_params), CLIP, hop)


def test_ctc_models_do_not_stream():
  spec = model_dir_lib.ModelSpec(
      name="wav2letter", task="ctc", role="student", num_channels=39, num_classes=5,
      projection_dim=0, params={}, format="mfcc", feature_params=DEFAULT_MFCC,
      normalization=None, data_fingerprint="",
      vocabulary={"blank_index": 0, "symbols": ["<b>", "a", "b", "c", "d"]})
  with pytest.raises(tflite.ExportError, match="streaming formats are for kws models"):
    streaming.check_supported(spec, None, 0.1)


@pytest.fixture(scope="module")
def kws_model(kws_train_records, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("stream") / "model")
  config = config_lib.load(None, [
      "model.name=wav2letter_kws_tiny", "data.batch_size=8", "data.eval_batch_size=32",
      "optimizer.warmup_steps=1", "train.steps=4", "train.eval_every=4",
      "train.early_stopping_patience=0"])
  loop.Trainer(config, model_dir, kws_train_records).run()
  return model_dir


def test_export_writes_streaming_files_with_cards(kws_model, kws_train_records, synthetic_corpus,
                                                  tmp_path):
  out = str(tmp_path / "export")
  config = tflite.ExportConfig(
      formats=("int8", "stream_float32", "stream_int8"), audio_dir=str(synthetic_corpus),
      num_parity=6, num_calibration=12, max_accuracy_drop=100.0, command="pytest",
      stream_hop_seconds=0.1)
  cards = tflite.export(kws_model, kws_train_records, out, config, log=lambda line: None)
  assert set(cards) == {"saved_model", "int8", "stream_float32", "stream_int8"}
  for kind in ("stream_float32", "stream_int8"):
    path = os.path.join(out, f"model_{kind}.tflite")
    card = json.load(open(os.path.join(out, f"model_{kind}.json")))
    assert card == cards[kind] and card["file"] == os.path.basename(path)
    assert card["size_bytes"] == os.path.getsize(path)
    assert card["input"] == {"shape": [1, 1600], "dtype": "float32"}
    assert set(card["outputs"]) == {"logits", "probabilities"}
    stream = card["streaming"]
    assert stream["hop_samples"] == 1600 and stream["calls_per_window"] == 10
    # The converter's default front end: 32 ms frames every 10 ms, 2 reflected frames
    # at each end of the window.
    assert stream["state"] == {
        "state_samples": {"shape": [1, 416], "dtype": "float32", "initial": 0.0,
                          "output": "next_state_samples"},
        "state_log_mel": {"shape": [1, 87, 40], "dtype": "float32", "initial": -100.0,
                          "output": "next_state_log_mel"},
        "state_left_edges": {"shape": [1, 9, 2, 40], "dtype": "float32", "initial": -100.0,
                             "output": "next_state_left_edges"}}
    assert card["latency_audio_seconds"] == 0.1 and card["latency_ms_single_thread"] > 0
    markdown = open(os.path.join(out, f"model_{kind}.md")).read()
    assert "1600 samples (100 ms) per call" in markdown and "`state_log_mel`" in markdown
  # Parity: each test clip streamed, its last call against Keras on its features.
  assert cards["stream_float32"]["parity"]["max_abs_logit_error"] < FLOAT_TOLERANCE
  assert cards["stream_int8"]["accuracy_gate"]["passed"]
  assert "accuracy_gate" not in cards["stream_float32"]
  # Apps and kws-infer load the file by its card; a clip in gives the clip's outputs.
  model = inference.load_model(os.path.join(out, "model_stream_int8.tflite"))
  assert isinstance(model, inference.StreamingTFLiteModel)
  clip = _stream_audio(seconds=1.0, seed=5)
  np.testing.assert_allclose(model(clip)["probabilities"],
                             inference.load_model(os.path.join(out, "model_int8.tflite"))(
                                 clip)["probabilities"], atol=0.01)


def test_cli_refuses_a_hop_it_cannot_stream_in_one_line(kws_model, kws_train_records, tmp_path):
  result = run_module("kws_tf.bin.export_tflite", f"--model_dir={kws_model}",
                      f"--data_dir={kws_train_records}", f"--out_dir={tmp_path / 'out'}",
                      "--formats=stream_int8", "--stream_hop_seconds=0.015", check=False)
  assert result.returncode == 1
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("error: cannot stream model 'wav2letter_kws_tiny'")
  assert "multiple of the front end's frame step (160 samples)" in error
  assert not os.path.exists(tmp_path / "out")


def test_pipeline_exports_the_distilled_kws_students_stream_int8_file():
  from kws_tf import stages
  from kws_tf.bin import pipeline
  options = pipeline.Options(workdir="w")
  model, data, corpus = (stages.Stage(n, "m", [], outputs=[n]) for n in ("model", "data", "c"))
  distill = pipeline.export_stage(options, "kws", "distill", model, data, corpus)
  assert "--formats=int8,stream_int8" in distill.options
  # Its first done file is the int8 card the summary reads.
  assert distill.done_files == [os.path.join("w", "export", "kws", "distill", "model_int8.json"),
                                os.path.join("w", "export", "kws", "distill",
                                             "model_stream_int8.json")]
  for task, name in (("kws", "standard"), ("kws", "teacher"), ("ctc", "distill")):
    stage = pipeline.export_stage(options, task, name, model, data, corpus)
    assert not any("stream" in option for option in stage.options), (task, name)
