"""Streaming TFLite files: audio in hops, the posteriors of the last clip every hop."""
import json
import os

import numpy as np
import pytest

import kws_tf  # noqa: F401
from ai_edge_litert.interpreter import Interpreter

from conftest import run_module
from kws_tf import config as config_lib
from kws_tf import features, inference
from kws_tf import model_dir as model_dir_lib
from kws_tf.export import convert, serving, stream_layers, streaming, tflite
from kws_tf.training import loop

CLIP = 16000
# A phone front end: 20 ms frames without overlap (configs/records_kws.yaml's at a 20 ms hop).
PHONE_MFCC = {"format": "mfcc", "frame_length": 320, "fft_length": 320, "frame_step": 320,
              "upper_edge_hertz": 4000, "dft": "matmul"}
# The converter's default: 32 ms frames every 10 ms.
DEFAULT_MFCC = {"format": "mfcc"}
# Without window-wide operations (no reflected samples, no clamp at the window's
# maximum, no deltas): the front ends of students that stream layer by layer.
FRAME_LOCAL = {"center": False, "top_db": None, "delta_width": 0}
PHONE_MFCC_LOCAL = {**PHONE_MFCC, **FRAME_LOCAL}
DEFAULT_MFCC_LOCAL = {**DEFAULT_MFCC, **FRAME_LOCAL}
# A tiny wav2letter without padding: receptive field 5 + 2 * 2 = 9 frames, stride 2.
VALID_WAV2LETTER = {"filters": [16, 16, 24], "widths": [5, 3, 1], "strides": [2, 1, 1],
                    "dropouts": [0.1, 0.1, 0.1], "padding": "valid"}
FLOAT_TOLERANCE = 1e-4


def _spec(name, params, feature_params):
  rng = np.random.RandomState(1)
  channels = features.from_dict(feature_params).num_channels
  return model_dir_lib.ModelSpec(
      name=name, task="kws", role="student", num_channels=channels, num_classes=3,
      projection_dim=0, params=params, format="mfcc", feature_params=feature_params,
      normalization={"mean": (rng.randn(channels) * 5).tolist(),
                     "std": rng.uniform(1.0, 10.0, channels).tolist()},
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
      representative = module.calibration_calls(calibration) if "int8" in kind else None
      content = streaming.convert(stream_dir, kind, model.name, representative)
    else:
      content = convert.convert(serving_dir, kind, model.name, list(calibration))
    paths[kind] = str(tmp_path / f"model_{kind}.tflite")
    with open(paths[kind], "wb") as f:
      f.write(content)
  stream_file = next((paths[k] for k in kinds if k in streaming.FORMATS), None)
  return paths, streaming.streaming_card(module, 16000, stream_file)


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


@pytest.mark.parametrize("name,params,feature_params,hop", [
    ("wav2letter_kws_tiny", {}, PHONE_MFCC, 1600),
    ("mobilenet_v3_small", {"alpha": 0.25, "minimalistic": True}, PHONE_MFCC, 1600),
    ("wav2letter", VALID_WAV2LETTER, PHONE_MFCC_LOCAL, 640),
], ids=["wav2letter", "mobilenet", "wav2letter-layer-by-layer"])
def test_stream_int8_matches_the_int8_file_on_every_full_window(name, params, feature_params,
                                                                 hop, tmp_path):
  spec = _spec(name, params, feature_params)
  waveform = _stream_audio(seconds=3.0, seed=1)
  model = _random_model(spec, waveform)
  calibration = [_stream_audio(seconds=1.0, seed=s) for s in range(2, 10)]
  calibration += [waveform[i:i + CLIP] for i in range(0, len(waveform) - CLIP + 1, 4000)]
  paths, card = _files(spec, model, hop, ("int8", "float32", "stream_int8"), tmp_path,
                       calibration)
  got, int8 = _compare(paths["stream_int8"], card, paths["int8"], waveform)
  int8_file, exact = _compare(paths["int8"], card, paths["float32"], waveform, stream=False)
  full = slice(card["calls_per_window"] - 1, None)

  def error(outputs, reference):
    return max(np.max(np.abs(o["probabilities"] - r["probabilities"]))
               for o, r in zip(outputs[full], reference[full]))

  # Two int8 files of one float32 network (the layer-by-layer stream calibrated on
  # its calls, the others on windows): the stream as close to float32 as the window
  # file, and the two apart by at most the window file's own error and a few output
  # rounding steps (1/256).
  assert error(got, exact) <= error(int8_file, exact) + 0.02
  assert error(got, int8) <= error(int8_file, exact) + 0.02
  # The network is int8; the front end, its state and the normalisation float32.
  interpreter = Interpreter(model_path=paths["stream_int8"])
  dtypes = {t["name"]: t["dtype"] for t in interpreter.get_tensor_details()}
  in_model = [d for n, d in dtypes.items() if n.startswith(model.name + "/")]
  assert sum(d == np.int8 for d in in_model) >= 10
  assert all(d in (np.int8, np.int32) for d in in_model)
  # Every front-end op computes in float (the QUANTIZE of the network's input may
  # take the front end's name).
  details = interpreter.get_tensor_details()
  front_end = [(op["op_name"], details[i]["dtype"]) for op in interpreter._get_ops_details()
               for i in op["outputs"]
               if details[i]["name"].startswith(serving.FRONT_END_SCOPE + "/")]
  assert front_end and all(d != np.int8 for op, d in front_end if op != "QUANTIZE")
  # The softmax too: int8 probabilities would step by 1/256 up to 255/256, too
  # coarse for a detection threshold near 1.
  softmax = [details[i]["dtype"] for op in interpreter._get_ops_details()
             if op["op_name"] == "SOFTMAX" for i in op["outputs"]]
  assert softmax == [np.float32]
  probabilities = np.concatenate([o["probabilities"] for o in got])
  assert not np.allclose(probabilities * 256, np.round(probabilities * 256))
  # Audio in and posteriors out are float32; layer by layer the state is the
  # network's int8 (state_io), otherwise the front end's float32.
  runner = Interpreter(model_path=paths["stream_int8"]).get_signature_runner()
  for name_, detail in {**runner.get_input_details(), **runner.get_output_details()}.items():
    by_layers = feature_params == PHONE_MFCC_LOCAL and "state" in name_
    assert detail["dtype"] == (np.int8 if by_layers else np.float32), name_
  for name_, entry in card["state"].items():
    assert entry["dtype"] == runner.get_input_details()[name_]["dtype"].__name__


@pytest.mark.parametrize("params,feature_params,hop", [
    (VALID_WAV2LETTER, PHONE_MFCC_LOCAL, 640),
    ({**VALID_WAV2LETTER, "strides": [1, 1, 1], "conv_type": "gated"}, PHONE_MFCC_LOCAL, 320),
    (VALID_WAV2LETTER, DEFAULT_MFCC_LOCAL, 1600),
    ({**VALID_WAV2LETTER, "pooling": "centred"}, PHONE_MFCC_LOCAL, 640),
    ({**VALID_WAV2LETTER, "pooling": "attention"}, PHONE_MFCC_LOCAL, 640),
], ids=["stride2-phone-40ms", "gated-stride1-phone-20ms", "stride2-default-100ms",
        "centred-phone-40ms", "attention-phone-40ms"])
def test_layer_stream_float32_equals_the_non_streaming_file_on_every_window(
    params, feature_params, hop, tmp_path):
  spec = _spec("wav2letter", params, feature_params)
  waveform = _stream_audio()
  model = _random_model(spec, waveform)
  module = streaming.StreamingModule(model, spec, CLIP, hop)
  assert module.by_layers
  paths, card = _files(spec, model, hop, ("float32", "stream_float32"), tmp_path)
  assert card["computes"] == "the new frames of every layer"
  # No log-mel window in the state: a buffer per convolution and the pooled frames.
  assert "state_log_mel" not in card["state"] and "state_pool" in card["state"]
  got, expected = _compare(paths["stream_float32"], card, paths["float32"], waveform)
  assert len(got) == len(waveform) // hop
  for key in ("probabilities", "logits"):
    errors = [np.max(np.abs(g[key] - e[key])) for g, e in zip(got, expected)]
    assert max(errors) < FLOAT_TOLERANCE, (key, int(np.argmax(errors)))
  probabilities = np.concatenate([e["probabilities"] for e in expected])
  assert np.ptp(probabilities, axis=0).max() > 0.05


def test_layer_stream_state_of_a_stride_2_student_at_40_ms():
  """The phone front end without window-wide operations: 50 frames of 20 ms per
  window, no overlap (no sample state); conv0 (width 5, stride 2) gives 23
  frames and skips the window's last frame, so it keeps 5 - 2 + 1 = 4 input
  frames; conv1 (width 3) keeps 2 and gives 21 frames, of which one is new per
  call: the pooling keeps 20."""
  spec = _spec("wav2letter", VALID_WAV2LETTER, PHONE_MFCC_LOCAL)
  module = streaming.StreamingModule(model_dir_lib.build_model(spec), spec, CLIP, 640)
  assert module.layout.state_shapes() == {"conv0": (1, 4, 1, 13), "conv1": (1, 2, 1, 16),
                                          "pool": (1, 20, 1, 24)}
  assert module.layout.pool_frames == 21 and module.layout.calls_per_window == 25
  # The initial state: each layer's frames of silence, per channel.
  card = streaming.streaming_card(module, 16000)["state"]
  assert len(card["state_conv1"]["initial"]) == 16
  state = module.initial_state()["state_conv1"]
  np.testing.assert_array_equal(np.full((1, 2, 1, 16), card["state_conv1"]["initial"]), state)


@pytest.mark.parametrize("params,feature_params,hop,message", [
    (VALID_WAV2LETTER, PHONE_MFCC_LOCAL, 1600,
     "the stream's hop of 5 frames is not a multiple of the model's total time stride 2"),
    ({**VALID_WAV2LETTER, "widths": [47, 3, 1]}, PHONE_MFCC_LOCAL, 640,
     "a window of 50 frames leaves layer 'conv1' no frame"),
])
def test_layer_stream_refuses_hops_and_windows_it_cannot_stream(params, feature_params, hop,
                                                                 message):
  spec = _spec("wav2letter", params, feature_params)
  with pytest.raises(tflite.ExportError, match=f"cannot stream model 'wav2letter': {message}"):
    streaming.check_supported(spec, CLIP, hop / 16000)


@pytest.mark.parametrize("name,params,feature_params,reason", [
    ("wav2letter", VALID_WAV2LETTER, {**PHONE_MFCC, "center": False, "delta_width": 0},
     "window-wide operations (top_db=80.0"),
    ("wav2letter", VALID_WAV2LETTER, {**PHONE_MFCC_LOCAL, "delta_width": 9},
     "window-wide operations (delta_width=9"),
    ("wav2letter_kws_tiny", {}, PHONE_MFCC_LOCAL, "layer 'conv0_mask' reads a frame mask"),
    ("mobilenet_v3_small", {"alpha": 0.25}, PHONE_MFCC_LOCAL,
     "layer 'stem_mask' reads a frame mask"),
])
def test_students_with_a_window_wide_operation_stream_the_window(name, params, feature_params,
                                                                 reason):
  spec = _spec(name, params, feature_params)
  model = model_dir_lib.build_model(spec)
  front_end = serving.export_front_end(feature_params)
  assert reason in stream_layers.unsupported(model, front_end)
  module = streaming.StreamingModule(model, spec, CLIP, 1600)
  assert not module.by_layers and isinstance(module.layout, streaming.StreamLayout)
  assert streaming.streaming_card(module, 16000)["computes"] == (
      "the new log-mel frames, then the network on the whole window")


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


# The converter's flags for the phone front end without window-wide operations.
FRAME_LOCAL_FLAGS = ("--feature_params=mfcc.frame_length=320,mfcc.fft_length=320,"
                     "mfcc.frame_step=320,mfcc.upper_edge_hertz=4000,mfcc.center=false,"
                     "mfcc.top_db=none,mfcc.delta_width=0")


@pytest.fixture(scope="module")
def frame_local_records(synthetic_corpus, tmp_path_factory):
  """KWS records whose mfcc is the phone front end without window-wide operations."""
  out = tmp_path_factory.mktemp("frame_local") / "records"
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}", "--corpus=vivos",
             f"--out_dir={out}", "--splits=train,test", "--formats=mfcc", "--task=kws",
             f"--alignments={synthetic_corpus}/*/alignments.ctm", "--examples_per_shard=40",
             "--cores=2", FRAME_LOCAL_FLAGS)
  return str(out)


def _valid_config(widths, padding="valid"):
  return config_lib.load(None, [
      "model.name=wav2letter", "model.params.filters=[16,16,24]",
      f"model.params.widths={widths}", "model.params.strides=[1,1,1]",
      "model.params.dropouts=[0.1,0.1,0.1]", f"model.params.padding={padding}",
      "data.batch_size=8", "data.eval_batch_size=32", "optimizer.warmup_steps=1",
      "train.steps=4", "train.eval_every=4", "train.early_stopping_patience=0"])


def test_records_train_and_export_a_student_that_streams_layer_by_layer(
    frame_local_records, synthetic_corpus, tmp_path):
  """The converter writes the front end's options into the records, training
  takes them into the model dir, and the export computes them in-graph: the
  stream_float32 file of a student trained on them streams layer by layer and
  equals Keras on the parity clips' features."""
  metadata = json.load(open(os.path.join(frame_local_records, "metadata.json")))
  params = metadata["formats"]["mfcc"]["params"]
  assert (params["center"], params["top_db"], params["delta_width"]) == (False, None, 0)
  assert metadata["formats"]["mfcc"]["num_channels"] == 13
  model_dir = str(tmp_path / "model")
  loop.Trainer(_valid_config("[5,3,1]"), model_dir, frame_local_records).run()
  out = str(tmp_path / "export")
  config = tflite.ExportConfig(
      formats=("stream_float32", "stream_int8"), audio_dir=str(synthetic_corpus), num_parity=6,
      num_calibration=4, max_accuracy_drop=100.0, command="pytest", stream_hop_seconds=0.02)
  cards = tflite.export(model_dir, frame_local_records, out, config, log=lambda line: None)
  for kind in ("stream_float32", "stream_int8"):
    stream = cards[kind]["streaming"]
    assert stream["computes"] == "the new frames of every layer"
    assert stream["hop_samples"] == 320 and stream["calls_per_window"] == 50
    # 50 frames a window, receptive field 5 + 2 = 7 frames: 44 pooled frames.
    assert stream["state"]["state_pool"]["shape"] == [1, 43, 1, 24]
  assert cards["stream_float32"]["parity"]["max_abs_logit_error"] < FLOAT_TOLERANCE
  # The int8 file's state is int8 at its interface, each with the scale and zero
  # point its initial values were quantized with; the float32 file's is float32.
  for name, entry in cards["stream_int8"]["streaming"]["state"].items():
    assert entry["dtype"] == "int8" and entry["scale"] > 0, name
    assert -128 <= entry["zero_point"] <= 127
    assert cards["stream_float32"]["streaming"]["state"][name]["dtype"] == "float32"
  assert ("`state_pool` int8 [1, 43, 1, 24] starting at per-channel values"
          in open(os.path.join(out, "model_stream_int8.md")).read())


@pytest.mark.parametrize("widths,padding,message", [
    ("[49,3,1]", "valid", "model.params: the model's frames read 51 input frames each "
     r"\(receptive field\), the records' clips have 50: no frame to pool"),
    ("[5,3,1]", "causal", "model.params: padding must be 'same' or 'valid', got 'causal'"),
])
def test_training_refuses_a_model_with_no_frame_to_pool_or_a_bad_padding_in_one_line(
    widths, padding, message, frame_local_records, tmp_path):
  with pytest.raises(loop.TrainingError, match=message):
    loop.Trainer(_valid_config(widths, padding), str(tmp_path / "model"),
                 frame_local_records).run()


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
