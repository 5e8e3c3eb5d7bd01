"""Export: SavedModel and TFLite files with the front end inside, parity, gate, QAT, cards."""
import dataclasses
import glob
import json
import os

import numpy as np
import pytest

import kws_tf  # noqa: F401
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from conftest import run_module
from kws_tf import audio, config as config_lib
from kws_tf import model_dir as model_dir_lib
from kws_tf.distill import quantization
from kws_tf.evaluation import ctc_logits
from kws_tf.export import card as card_lib
from kws_tf.export import convert, examples, qat, serving, tflite
from kws_tf.export import parity as parity_lib
from kws_tf.training import loop

CARD_KEYS = {"name", "file", "format", "task", "model", "labels", "sample_rate",
             "window_samples", "window_seconds", "hop_samples", "hop_seconds",
             "feature_format", "feature_params", "input", "outputs", "parity", "size_bytes",
             "latency_ms_single_thread", "parameters", "command", "stored_weights", "training"}
# The accuracy gate of the trained kws student's int8 and qat files: points lost on
# its 54 train clips (parity on the clips it learnt, where its accuracy means
# something: 2 clips of 54 are 3.7 points).
GATE_POINTS = 5.0
KWS_TRAIN_CLIPS = 54
# Tests of an export whose model is barely trained: its accuracy means nothing,
# so the gate is left open there (max_accuracy_drop=UNGATED).
UNGATED = 100.0


def _train(records_dir, model_dir, *overrides):
  config = config_lib.load(None, [
      "data.batch_size=8", "data.eval_batch_size=32", "optimizer.warmup_steps=2",
      "train.early_stopping_patience=0", *overrides])
  loop.Trainer(config, model_dir, records_dir).run()
  return model_dir


def _export(model_dir, records_dir, corpus, out_dir, formats, **options):
  options = {"num_parity": 12, "max_accuracy_drop": UNGATED, **options}
  config = tflite.ExportConfig(formats=formats, audio_dir=str(corpus), num_calibration=24,
                               command="pytest", **options)
  cards = tflite.export(model_dir, records_dir, out_dir, config, log=lambda line: None)
  return out_dir, cards


@pytest.fixture(scope="module")
def kws_model(kws_train_records, tmp_path_factory):
  """wav2letter_kws_tiny fitted to the 54 train clips (about 0.9 accuracy on them)."""
  return _train(kws_train_records, str(tmp_path_factory.mktemp("kws") / "model"),
                "model.name=wav2letter_kws_tiny", "model.params.dropouts=[0,0,0,0,0,0]",
                "optimizer.learning_rate=3e-3", "data.validation_split=train",
                "train.steps=120", "train.eval_every=120")


@pytest.fixture(scope="module")
def ctc_model(ctc_train_records, tmp_path_factory):
  return _train(ctc_train_records, str(tmp_path_factory.mktemp("ctc") / "model"),
                "task=ctc", "model.name=wav2letter", "model.params.filters=[32,32]",
                "model.params.widths=[5,3]", "model.params.strides=[2,1]",
                "model.params.dropouts=[0,0]", "data.validation_split=test", "train.steps=8",
                "train.eval_every=8")


@pytest.fixture(scope="module")
def kws_export(kws_model, kws_train_records, synthetic_corpus, tmp_path_factory):
  return _export(kws_model, kws_train_records, synthetic_corpus,
                 str(tmp_path_factory.mktemp("kws_export")),
                 ("float32", "float16", "dynamic", "int8", "qat"), split="train",
                 num_parity=KWS_TRAIN_CLIPS, max_accuracy_drop=GATE_POINTS, qat_steps=20,
                 qat_batch_size=8)


@pytest.fixture(scope="module")
def ctc_export(ctc_model, ctc_train_records, synthetic_corpus, tmp_path_factory):
  return _export(ctc_model, ctc_train_records, synthetic_corpus,
                 str(tmp_path_factory.mktemp("ctc_export")),
                 ("float32", "dynamic", "qat"), qat_steps=4, qat_batch_size=4)


def _test_waveform(corpus, task):
  """A test-speaker utterance (ctc) or its first second, zero-padded (kws), 16 kHz."""
  path = sorted(glob.glob(os.path.join(corpus, "test", "waves", "*", "*.wav")))[0]
  waveform = audio.read_audio(path, 16000)
  if task == "ctc":
    return waveform
  return np.pad(waveform[:16000], (0, max(0, 16000 - len(waveform))))


def _keras_on_features(model_dir, waveform):
  """The Keras model's outputs on features.py features of ``waveform``, normalised."""
  spec = model_dir_lib.read_spec(model_dir)
  values = spec.feature_config.compute(waveform).numpy()
  values = (values - np.array(spec.normalization["mean"], np.float32)) / np.array(
      spec.normalization["std"], np.float32)
  model = model_dir_lib.load_trained_model(model_dir)
  outputs = model({"features": values[np.newaxis], "num_frames": np.array([len(values)])},
                  training=False)
  return {k: v.numpy() for k, v in outputs.items()}


def _tflite_outputs(path, waveform):
  """Runs a TFLite file as an app would: resize the input, invoke, read named outputs."""
  # Tensor indices of the signature's names (read from a second interpreter of the file,
  # since a signature runner keeps references that block resizing).
  signature = Interpreter(model_path=path).get_signature_runner("serving_default")
  outputs = {name: d["index"] for name, d in signature.get_output_details().items()}
  interpreter = Interpreter(model_path=path)
  index = signature.get_input_details()["waveform"]["index"]
  interpreter.resize_tensor_input(index, [1, len(waveform)])
  interpreter.allocate_tensors()
  interpreter.set_tensor(index, waveform[np.newaxis].astype(np.float32))
  interpreter.invoke()
  return {name: interpreter.get_tensor(i) for name, i in outputs.items()}


def _exported(request, task):
  out_dir, cards = request.getfixturevalue(f"{task}_export")
  model_dir = request.getfixturevalue(f"{task}_model")
  return out_dir, cards, model_dir


@pytest.mark.parametrize("task", ["kws", "ctc"])
def test_saved_model_equals_keras_on_the_front_end_features(task, request, synthetic_corpus):
  out_dir, _, model_dir = _exported(request, task)
  waveform = _test_waveform(synthetic_corpus, task)
  expected = _keras_on_features(model_dir, waveform)
  signature = tf.saved_model.load(os.path.join(out_dir, "saved_model")).signatures[
      "serving_default"]
  got = {k: v.numpy() for k, v in signature(waveform=tf.constant(waveform[np.newaxis])).items()}
  if task == "kws":
    assert set(got) == {"logits", "probabilities"}
    np.testing.assert_allclose(got["probabilities"], tf.nn.softmax(expected["logits"]),
                               atol=1e-5)
  else:
    assert set(got) == {"logits", "logit_frames"}
    assert got["logit_frames"].tolist() == expected["logit_frames"].tolist()
    assert got["logits"].shape[1] == expected["logits"].shape[1] > 10
  np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-4)


@pytest.mark.parametrize("task", ["kws", "ctc"])
def test_float32_tflite_equals_keras(task, request, synthetic_corpus):
  out_dir, cards, model_dir = _exported(request, task)
  waveform = _test_waveform(synthetic_corpus, task)
  expected = _keras_on_features(model_dir, waveform)
  got = _tflite_outputs(os.path.join(out_dir, "model_float32.tflite"), waveform)
  np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-4)
  if task == "ctc":
    assert got["logit_frames"].tolist() == expected["logit_frames"].tolist()
    # A dynamic input: a shorter utterance through the same file.
    short = waveform[:len(waveform) // 2]
    np.testing.assert_allclose(_tflite_outputs(os.path.join(out_dir, "model_float32.tflite"),
                                               short)["logits"],
                               _keras_on_features(model_dir, short)["logits"], atol=1e-4)
  parity = cards["float32"]["parity"]
  assert parity["max_abs_logit_error"] < 1e-4 and parity["drop_points"] == 0.0
  assert parity["num_examples"] == (KWS_TRAIN_CLIPS if task == "kws" else 6)
  assert cards["saved_model"]["parity"]["max_abs_logit_error"] < 1e-4


@pytest.mark.parametrize("task", ["kws", "ctc"])
def test_float16_and_dynamic_are_close_and_smaller(task, request):
  out_dir, cards, _ = _exported(request, task)
  kinds = ("float16", "dynamic") if task == "kws" else ("dynamic",)
  for kind in kinds:
    # The dynamic file keeps the front end float32: quantizing its mel / DFT matrices
    # too (TFLite's default) gave logit errors around 1 on these models.
    assert cards[kind]["parity"]["max_abs_logit_error"] < 0.1, kind
    assert cards[kind]["size_bytes"] < cards["float32"]["size_bytes"], kind
  if task == "kws":
    assert cards["dynamic"]["size_bytes"] < cards["float16"]["size_bytes"]


def test_int8_model_is_integer_with_a_float_front_end(kws_export, kws_model):
  out_dir, cards = kws_export
  card = cards["int8"]
  assert card["parity"]["num_examples"] == KWS_TRAIN_CLIPS
  assert card["accuracy_gate"] == {"max_drop_points": GATE_POINTS, "passed": True}
  assert card["input"] == {"shape": [1, 16000], "dtype": "float32"}
  interpreter = Interpreter(model_path=os.path.join(out_dir, "model_int8.tflite"))
  dtypes = {t["name"]: t["dtype"] for t in interpreter.get_tensor_details()}
  model_name = model_dir_lib.read_spec(kws_model).name
  # Every weight and activation of the model is int8 (biases int32).
  in_model = {n: d for n, d in dtypes.items() if n.startswith(model_name + "/")}
  assert sum(d == np.int8 for d in in_model.values()) >= 14  # 7 weights, 7 activations
  assert all(d in (np.int8, np.int32) for d in in_model.values())
  # The normalised features (the front end's last op) are float32.
  assert dtypes["front_end/mul"] == np.float32


def test_int8_and_qat_files_keep_the_accuracy_of_a_trained_student(
    kws_export, kws_model, kws_train_records, synthetic_corpus):
  _, cards = kws_export
  keras_accuracy = cards["float32"]["parity"]["keras"]["accuracy"]
  # The student tells the 10 classes apart: far better than always the commonest.
  labels = [e.label for e in examples.load_examples(
      kws_model, kws_train_records, "train", KWS_TRAIN_CLIPS, str(synthetic_corpus))]
  assert len(labels) == KWS_TRAIN_CLIPS
  assert keras_accuracy >= max(np.bincount(labels)) / len(labels) + 0.3
  for kind in ("int8", "qat"):
    parity = cards[kind]["parity"]
    assert cards[kind]["accuracy_gate"] == {"max_drop_points": GATE_POINTS, "passed": True}
    assert parity["num_examples"] == KWS_TRAIN_CLIPS
    assert parity["exported"]["accuracy"] >= keras_accuracy - GATE_POINTS / 100, kind
    assert parity["max_abs_logit_error"] < 1.0, kind


def test_accuracy_gate_refuses_a_file_that_loses_accuracy(
    kws_model, kws_train_records, synthetic_corpus, tmp_path, monkeypatch):
  """An int8 file that lost the student's accuracy (here: converted from the untrained
  model) is not left under its name (an earlier export's file of that name goes too),
  and export fails. (int8 conversion itself is robust here: calibrating on silence,
  noise or one clip cost at most 2 points of this student's accuracy.)"""
  out = tmp_path / "export"
  out.mkdir()
  (out / "model_int8.tflite").write_bytes(b"an earlier export")
  (out / "model_int8.json").write_text("{}")
  spec = model_dir_lib.read_spec(kws_model)
  keras.utils.set_random_seed(0)
  untrained = str(tmp_path / "untrained_saved_model")
  serving.ServingModule(model_dir_lib.build_model(spec), spec, 16000).save(untrained)
  convert_file = convert.convert

  def lost_its_training(source, kind, model_name="", representative=None, int8_io=False):
    return convert_file(untrained if kind == "int8" else source, kind, model_name,
                        representative, int8_io)

  monkeypatch.setattr(tflite.convert_lib, "convert", lost_its_training)
  with pytest.raises(tflite.ExportError, match="accuracy gate failed") as error:
    _export(kws_model, kws_train_records, synthetic_corpus, str(out), ("int8", "float32"),
            split="train", num_parity=KWS_TRAIN_CLIPS, max_accuracy_drop=GATE_POINTS)
  rejected = json.load(open(out / "model_int8.rejected.json"))
  drop = rejected["parity"]["drop_points"]
  assert drop > GATE_POINTS and rejected["accuracy_gate"]["passed"] is False
  assert f"loses {drop:.2f} points" in str(error.value)
  assert f"kept as {out / 'model_int8.rejected.tflite'}" in str(error.value)
  assert not os.path.exists(out / "model_int8.tflite")
  assert not os.path.exists(out / "model_int8.json")
  assert rejected["file"] == "model_int8.rejected.tflite"
  assert rejected["size_bytes"] == os.path.getsize(out / "model_int8.rejected.tflite")
  # The float32 file, after it in the formats, was still written.
  assert json.load(open(out / "model_float32.json"))["parity"]["drop_points"] == 0.0
  # Exported again as it should be, the int8 file passes and the rejected one goes.
  monkeypatch.setattr(tflite.convert_lib, "convert", convert_file)
  _export(kws_model, kws_train_records, synthetic_corpus, str(out), ("int8",),
          split="train", num_parity=KWS_TRAIN_CLIPS, max_accuracy_drop=GATE_POINTS)
  assert json.load(open(out / "model_int8.json"))["accuracy_gate"]["passed"] is True
  assert not glob.glob(str(out / "model_int8.rejected.*"))


def test_one_changed_answer_of_100_is_one_point_and_passes_a_1_point_gate():
  spec = _kws_spec("wav2letter_kws_tiny", {})
  drop = parity_lib.accuracy_drop(spec, {"accuracy": 0.79}, {"accuracy": 0.78})
  assert drop == 1.0 and drop <= tflite.ExportConfig().max_accuracy_drop


def test_accuracy_gate_fails_the_command_with_a_clear_message(
    kws_model, kws_train_records, synthetic_corpus, tmp_path):
  out = tmp_path / "export"
  # No file can lose less than -100.5 points: the gate must fail.
  result = run_module("kws_tf.bin.export_tflite", f"--model_dir={kws_model}",
                      f"--data_dir={kws_train_records}", f"--out_dir={out}",
                      f"--audio_dir={synthetic_corpus}", "--formats=float32,int8",
                      "--int8_io=int8", "--num_parity=12", "--num_calibration=24",
                      "--max_accuracy_drop=-100.5", check=False)
  assert result.returncode != 0
  assert "accuracy gate failed" in result.stderr
  assert f"{out / 'model_int8.tflite'} loses" in result.stderr
  assert "--max_accuracy_drop=-100.5" in result.stderr and "points" in result.stderr
  assert not os.path.exists(out / "model_int8.tflite")
  card = json.load(open(out / "model_int8.rejected.json"))
  assert card["accuracy_gate"]["passed"] is False
  assert card["command"].endswith("--max_accuracy_drop=-100.5")
  # int8 input and outputs, with their quantization parameters in the card.
  assert card["input"]["dtype"] == "int8" and card["input"]["quantization"]["scale"] > 0
  assert card["outputs"]["logits"]["dtype"] == "int8"
  # Every file written is complete and usable.
  for name in ("model_float32", "model_int8.rejected"):
    interpreter = Interpreter(model_path=str(out / f"{name}.tflite"))
    interpreter.allocate_tensors()
    assert json.load(open(out / f"{name}.json"))["size_bytes"] == os.path.getsize(
        out / f"{name}.tflite")
  assert not glob.glob(str(out / "*.tmp-*"))


def test_qat_export_of_a_wav2letter_student(ctc_export):
  """The qat file of a ctc student (8 steps: its CER means nothing, the accuracy bound
  is tested on the kws student)."""
  out_dir, cards = ctc_export
  card = cards["qat"]
  assert card["format"] == "qat" and card["qat_steps"] == 4
  assert card["fine_tune"]["loss"] == "CTC on the transcripts only, no teacher"
  assert {"cer", "wer"} <= set(card["parity"]["exported"]) and "accuracy_gate" in card
  assert card["input"] == {"shape": [1, -1], "dtype": "float32"}
  assert card["outputs"]["logits"]["shape"][1:] == [-1, len(card["labels"]["vocabulary"])]
  interpreter = Interpreter(model_path=os.path.join(out_dir, "model_qat.tflite"))
  assert any(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())


def test_qat_export_of_a_minimalistic_mobilenet_kws_student(kws_train_records, synthetic_corpus,
                                                           tmp_path):
  model_dir = _train(kws_train_records, str(tmp_path / "model"), "model.name=mobilenet_v3_small",
                     "model.params.minimalistic=true", "model.params.alpha=0.25",
                     "train.steps=2", "train.eval_every=2")
  out_dir, cards = _export(model_dir, kws_train_records, synthetic_corpus, str(tmp_path / "out"),
                           ("qat",), qat_steps=2, qat_batch_size=4)
  assert cards["qat"]["parity"]["max_abs_logit_error"] < 0.5
  interpreter = Interpreter(model_path=os.path.join(out_dir, "model_qat.tflite"))
  assert any(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())


def _kws_spec(name, params):
  return model_dir_lib.ModelSpec(
      name=name, task="kws", role="student", num_channels=39, num_classes=2, projection_dim=0,
      params=params, format="mfcc", feature_params={"format": "mfcc"}, normalization=None,
      data_fingerprint="", classes=["a", "negative"])


def test_qat_refuses_models_without_support():
  assert qat.supports_qat(_kws_spec("wav2letter_kws_tiny", {}))
  assert qat.supports_qat(_kws_spec("mobilenet_v3_small", {"minimalistic": True}))
  for name in ("mobilenet_v3_small", "resnet18", "whisper_teacher"):
    with pytest.raises(tflite.ExportError, match=f"QAT is not supported for model '{name}'"):
      qat.check_supported(_kws_spec(name, {}))


def test_whisper_log_mel_front_end_uses_a_matmul_dft(kws_train_records, synthetic_corpus,
                                                     tmp_path, kws_export):
  model_dir = _train(kws_train_records, str(tmp_path / "model"), "data.format=logmel",
                     "model.name=wav2letter_kws_tiny", "train.steps=2", "train.eval_every=2")
  out_dir, cards = _export(model_dir, kws_train_records, synthetic_corpus,
                           str(tmp_path / "export"), ("float32", "int8"))
  card = cards["float32"]
  assert card["feature_params"]["fft_length"] == 400
  assert card["feature_params"]["dft"] == "matmul"
  assert card["window_samples"] == 400 and card["hop_samples"] == 160
  assert card["parity"]["max_abs_logit_error"] < 1e-4

  def complex_tensors(path):
    return [t for t in Interpreter(model_path=path).get_tensor_details()
            if t["dtype"] == np.complex64]

  # No RFFT (complex tensors) with n_fft 400; the MFCC model (n_fft 512) keeps TFLite's RFFT.
  assert not complex_tensors(os.path.join(out_dir, "model_float32.tflite"))
  assert complex_tensors(os.path.join(kws_export[0], "model_float32.tflite"))
  waveform = _test_waveform(synthetic_corpus, "kws")
  np.testing.assert_allclose(
      _tflite_outputs(os.path.join(out_dir, "model_float32.tflite"), waveform)["logits"],
      _keras_on_features(model_dir, waveform)["logits"], atol=1e-4)
  # In the int8 file the DFT's products, and everything up to the normalised
  # features, stay float: the only int8 tensor outside the model is the
  # quantized copy of the features that it reads.
  model_name = model_dir_lib.read_spec(model_dir).name
  front_end = {t["name"]: t["dtype"] for t in Interpreter(
      model_path=os.path.join(out_dir, "model_int8.tflite")).get_tensor_details()
      if not convert.in_model(t["name"], model_name)}
  assert front_end["front_end/mul"] == np.float32
  assert [n for n, d in front_end.items() if d == np.int8] == ["tfl.quantize"]
  assert cards["int8"]["parity"]["max_abs_logit_error"] < 0.5


def test_export_front_end_switches_to_matmul_only_when_needed():
  assert serving.export_front_end({"format": "logmel"}).dft == "matmul"
  assert serving.export_front_end({"format": "mfcc", "fft_length": 512}).dft == "fft"
  assert serving.export_front_end({"format": "raw"}).format == "raw"


@pytest.mark.parametrize("task", ["kws", "ctc"])
def test_model_cards_have_the_required_keys(task, request):
  out_dir, cards, model_dir = _exported(request, task)
  spec = model_dir_lib.read_spec(model_dir)
  for name in ("saved_model", "model_float32", "model_dynamic"):
    card = json.load(open(os.path.join(out_dir, name + ".json")))
    assert CARD_KEYS <= set(card), CARD_KEYS - set(card)
    markdown = open(os.path.join(out_dir, name + ".md")).read()
    assert card["file"] in markdown and f"{card['size_bytes']:,}" in markdown
    assert card["task"] == task and card["sample_rate"] == 16000
    assert card["hop_samples"] == 160 and card["window_samples"] == 512
    assert card["feature_format"] == "mfcc" and card["command"] == "pytest"
    assert card["parameters"] == model_dir_lib.load_trained_model(model_dir).count_params()
    if name != "saved_model":
      assert card["latency_ms_single_thread"] > 0
      assert card["size_bytes"] == os.path.getsize(os.path.join(out_dir, card["file"]))
    stored = card["stored_weights"]
    assert stored["tensors"] >= 3 and sum(stored["dtypes"].values()) == stored["tensors"]
    if name == "model_dynamic":
      # int8 kernels; TFLite leaves a tensor under 1,024 values (a classifier) float32.
      assert set(stored["dtypes"]) <= {"int8", "float32"} and stored["dtypes"]["int8"] >= 2
    else:
      assert stored["dtypes"] == {"float32": stored["tensors"]}
  if task == "kws":
    assert card["labels"]["classes"] == spec.classes and card["clip_samples"] == 16000
    assert card["input"] == {"shape": [1, 16000], "dtype": "float32"}
    assert card["training"] == {"mode": "standard", "steps": 120,
                                "loss": "cross-entropy on the labels"}
  else:
    assert card["labels"]["vocabulary"] == spec.vocabulary["symbols"]
    assert card["labels"]["blank_index"] == 0 and card["logit_frame_seconds"] == 0.02
    assert card["input"] == {"shape": [1, -1], "dtype": "float32"}
    assert card["training"] == {"mode": "standard", "steps": 8, "loss": "CTC on the transcripts"}
    # The front end's 512-sample window (+-256) and 9-frame deltas (+-640), the
    # width-5 conv at 10 ms frames (+-320) and the width-3 one at 20 ms (+-320):
    # 1536 samples either side, 1600 to a whole logit frame.
    assert card["receptive_field"] == {"left_samples": 1600, "right_samples": 1600,
                                       "logit_hop_samples": 320}
    assert "reads 1600 samples before and 1600 after" in markdown


def test_receptive_field_of_a_model_that_reads_the_whole_input_is_none(ctc_model):
  """MobileNetV3's squeeze-excite averages over every frame: no chunk of the audio
  gives the logits of the whole; the wav2letter student's is bounded (above)."""
  spec = dataclasses.replace(model_dir_lib.read_spec(ctc_model), name="mobilenet_v3_small",
                             params={"alpha": 0.25})
  module = serving.ServingModule(model_dir_lib.build_model(spec), spec)
  assert serving.receptive_field(module, spec) is None
  minimalistic = dataclasses.replace(spec, params={"alpha": 0.25, "minimalistic": True})
  field = serving.receptive_field(
      serving.ServingModule(model_dir_lib.build_model(minimalistic), minimalistic),
      minimalistic)
  assert field is not None and 1600 < field["left_samples"] < 16000


def _config_dir(path, *overrides):
  os.makedirs(path)
  with open(os.path.join(path, "config.yaml"), "w") as f:
    f.write(config_lib.dump(config_lib.load(None, overrides)))
  return str(path)


def test_card_training_states_the_loss_that_trained_the_weights(kws_model, tmp_path):
  spec = model_dir_lib.read_spec(kws_model)
  fitnet = card_lib.training(_config_dir(
      tmp_path / "fitnet", "mode=fitnet", "fitnet.stage=2", "distill.temperature=2",
      "distill.alpha=0.25", "distill.beta=1", "fitnet.kd_weight_start=4",
      "fitnet.kd_weight_end=1", "train.steps=30"), spec)
  # FitNet stage 2 weighs its KD term by distill.alpha and the hard loss by distill.beta
  # (kws_tf.distill.objectives.FitNetKD, tests/test_objectives.py).
  assert fitnet["mode"] == "fitnet" and fitnet["steps"] == 30
  assert fitnet["loss"] == ("1 * cross-entropy on the labels + lambda * 0.25 * T^2 * "
                            "KL(teacher_T || student_T) at T = 2, lambda from 4 to 1 over the "
                            "run")
  assert fitnet["fitnet"]["alpha"] == 0.25 and fitnet["fitnet"]["hard_weight"] == 1
  quantized = card_lib.training(_config_dir(
      tmp_path / "quantized", "mode=quantized_distill", "distill.alpha=0.7",
      "quantization.bits=4"), dataclasses.replace(spec, quantization={"bits": 4}))
  assert quantized["loss"].startswith("0.3 * cross-entropy on the labels + 0.7 * T^2")
  assert quantized["weight_quantization"] == {"bits": 4}
  assert card_lib.training(str(tmp_path), spec) is None  # no config.yaml
  with open(tmp_path / "config.yaml", "w") as f:
    f.write("mode: standard\nnot_a_section: 1\n")
  assert "not_a_section" in card_lib.training(str(tmp_path), spec)["unknown"]


def test_card_of_a_4_bit_student_says_its_files_store_8_bit_values(
    kws_model, kws_train_records, synthetic_corpus, tmp_path):
  """A 4-bit quantized-distilled student with batch norm: the int8 file holds int8
  weights (batch norm folded in, then rounded to 8 bits), the qat file weights that a
  fine-tune on the hard loss moved; the cards say so and count the levels."""
  bits, bucket_size = 4, 64
  spec = dataclasses.replace(
      model_dir_lib.read_spec(kws_model),
      quantization={"bits": bits, "bucket_size": bucket_size, "stochastic": False,
                    "keep_first_last_float": False})
  model_dir = tmp_path / "quantized"
  os.makedirs(model_dir / "best")
  model_dir_lib.write_spec(str(model_dir), spec)
  model = model_dir_lib.load_trained_model(kws_model)
  quantization.post_training_quantize(model, bits, bucket_size)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(model_dir / "best"),
                             max_to_keep=1).save(checkpoint_number=1)
  # The accuracy of these weights is not under test here.
  out_dir, cards = _export(str(model_dir), kws_train_records, synthetic_corpus,
                           str(tmp_path / "export"), ("int8", "qat"), qat_steps=2,
                           qat_batch_size=4)
  card = cards["int8"]
  stored = card["stored_weights"]
  assert card["weight_quantization"]["bits"] == bits
  assert stored["dtypes"] == {"int8": 7} and stored["bits_per_value"] == 8
  interpreter = Interpreter(model_path=os.path.join(out_dir, "model_int8.tflite"))
  interpreter.allocate_tensors()
  levels = []
  for t in interpreter.get_tensor_details():
    if t["name"].startswith(model.name + "/") and len(t["shape"]) >= 2 and t["dtype"] == np.int8:
      try:
        levels.append(len(np.unique(interpreter.get_tensor(t["index"]))))
      except ValueError:  # activations have no data before invoke
        pass
  assert len(levels) == 7
  assert stored["distinct_levels_per_tensor"] == {
      "min": min(levels), "median": float(np.median(levels)), "max": max(levels)}
  markdown = open(os.path.join(out_dir, "model_int8.md")).read()
  assert ("this file stores them as 8-bit values, not 4-bit packed ones (levels per tensor "
          "above): the file is the size of 8-bit weights") in markdown
  assert (f"7 weight tensors, 7 int8 (8 bits per value); {min(levels)} to {max(levels)} "
          "distinct levels per tensor") in markdown

  tuned = cards["qat"]
  assert tuned["weight_quantization"] is None and tuned["stored_weights"]["bits_per_value"] == 8
  assert tuned["fine_tune"] == {
      "steps": 2, "learning_rate": 1e-4, "batch_size": 4, "trained_grid_bits": bits,
      "method": "quantization-aware training: 8-bit fake quantization of weights and "
                "activations", "loss": "cross-entropy on the labels only, no teacher"}
  markdown = open(os.path.join(out_dir, "model_qat.md")).read()
  assert "loss cross-entropy on the labels only, no teacher" in markdown
  assert "moves the weights off the 4-bit grid of quantized distillation" in markdown
  assert "Quantized distillation trained" not in markdown


def test_quantized_distilled_weights_are_exported_as_they_are(kws_model, kws_train_records,
                                                             synthetic_corpus, tmp_path):
  """A quantized-distilled student's best checkpoint holds quantized weights; the float32
  file must hold exactly those. No batch norm here, so nothing but the mean pooling's
  constant 1 / frames (folded into the classifier by the converter) changes them."""
  bits, bucket_size = 3, 64
  spec = model_dir_lib.read_spec(kws_model)
  spec = dataclasses.replace(
      spec, params=dict(spec.params, batch_norm=False),
      quantization={"bits": bits, "bucket_size": bucket_size, "stochastic": False,
                    "keep_first_last_float": False})
  model_dir = tmp_path / "quantized"
  os.makedirs(model_dir / "best")
  model_dir_lib.write_spec(str(model_dir), spec)
  model = model_dir_lib.build_model(spec)
  quantization.post_training_quantize(model, bits, bucket_size)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(model_dir / "best"),
                             max_to_keep=1).save(checkpoint_number=1)
  out_dir, cards = _export(str(model_dir), kws_train_records, synthetic_corpus,
                           str(tmp_path / "export"), ("float32",))
  assert cards["float32"]["weight_quantization"]["bits"] == bits

  interpreter = Interpreter(model_path=os.path.join(out_dir, "model_float32.tflite"))
  interpreter.allocate_tensors()
  tensors = {}
  for t in interpreter.get_tensor_details():
    try:
      tensors[t["name"]] = interpreter.get_tensor(t["index"])
    except ValueError:  # activations have no data before invoke
      pass
  checked = 0
  for layer in model.layers:
    if not hasattr(layer, "kernel"):
      continue
    kernel = layer.kernel.numpy()
    # TFLite stores a conv kernel [out, height, width, in] and a dense one [out, in].
    order = (1, 2, 3, 0) if kernel.ndim == 4 else (1, 0)
    found = [np.transpose(v, order) for n, v in tensors.items()
             if f"/{layer.name}/" in f"/{n}" and v.ndim == kernel.ndim
             and np.transpose(v, order).shape == kernel.shape]
    assert len(found) == 1, layer.name
    largest = np.unravel_index(np.argmax(np.abs(kernel)), kernel.shape)
    scale = found[0][largest] / kernel[largest]
    if layer.name != "logits":
      assert scale == 1.0, layer.name
    np.testing.assert_allclose(found[0], kernel * scale, rtol=1e-6, atol=0)
    flat = found[0].reshape(-1)
    for start in range(0, flat.size, bucket_size):
      assert len(np.unique(flat[start:start + bucket_size])) <= 2 ** bits, layer.name
    checked += 1
  assert checked == 7  # six convolutions and the classifier


def test_records_without_waveforms_need_the_audio(kws_model, kws_train_records):
  with pytest.raises(tflite.ExportError, match="--audio_dir"):
    examples.load_examples(kws_model, kws_train_records, "test", 2)


def test_cut_clip_pads_outside_the_utterance():
  waveform = np.arange(1, 11, dtype=np.float32)
  np.testing.assert_array_equal(audio.cut_clip(waveform, -0.2, 5, 10), [0, 0, 1, 2, 3])
  np.testing.assert_array_equal(audio.cut_clip(waveform, 0.8, 5, 10), [9, 10, 0, 0, 0])


def test_help_lists_the_flags():
  result = run_module("kws_tf.bin.export_tflite", "--help", check=False)
  for flag in ("--formats", "--int8_io", "--max_accuracy_drop", "--qat_steps", "--audio_dir"):
    assert flag in result.stdout + result.stderr


def test_ctc_logits_of_the_exported_file_equal_the_model_dirs(ctc_model, ctc_export,
                                                              synthetic_corpus, tmp_path):
  """``ctc_logits``: the float32 file on the raw audio gives the Keras model's logits
  on the stored features, utterance by utterance, with the same labels."""
  records_dir = str(tmp_path / "records")
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}", "--corpus=vivos",
             f"--out_dir={records_dir}", "--splits=test", "--stats_splits=none",
             "--formats=raw,mfcc", "--task=ctc", "--cores=1")
  keras_logits, keras_labels, vocabulary = ctc_logits.model_dir_logits(
      ctc_model, records_dir, "test", batch_size=4)
  out_dir, _ = ctc_export
  file_logits, file_labels, file_vocabulary = ctc_logits.exported_logits(
      os.path.join(out_dir, "model_float32.tflite"), records_dir, "test", limit=3)
  assert len(file_logits) == 3 and file_labels == keras_labels[:3]
  assert file_vocabulary.symbols == vocabulary.symbols
  for got, expected in zip(file_logits, keras_logits):
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-3)
