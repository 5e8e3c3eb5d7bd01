"""TFLite Metadata of exported kws files and their MediaPipe AudioClassifier variant."""
import dataclasses
import io
import json
import os
import sys
import zipfile

import numpy as np
import pytest

import kws_tf  # noqa: F401
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import schema_py_generated as schema
from mediapipe.tasks.python import audio as mp_audio
from mediapipe.tasks.python.components.containers import audio_data

from kws_tf import inference
from kws_tf import model_dir as model_dir_lib
from kws_tf.export import examples as examples_lib
from kws_tf.export import metadata
from kws_tf.export.errors import ExportError
from test_export import _export, kws_model  # noqa: F401  (kws_model: a fixture)

FORMATS = ("float32", "int8", "qat")
INFO = metadata.ClassifierMetadata(
    name="tiny keyword spotter", version="test 1", description="Three classes.",
    labels=("có", "là", "negative"), sample_rate=100, outputs=("logits", "probabilities"))


class _TinyClassifier(tf.Module):
  """A waveform ``[1, 100]`` -> logits and probabilities of 3 classes, as exported files."""

  def __init__(self):
    super().__init__()
    self.weights = tf.constant(np.random.RandomState(0).randn(100, 3).astype(np.float32))

  @tf.function(input_signature=[tf.TensorSpec([1, 100], tf.float32, "waveform")])
  def serve(self, waveform):
    logits = tf.matmul(waveform, self.weights)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits)}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """A float32 TFLite file of ``_TinyClassifier`` without metadata (bytes)."""
  module = _TinyClassifier()
  path = str(tmp_path_factory.mktemp("tiny") / "saved_model")
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
  return tf.lite.TFLiteConverter.from_saved_model(path).convert()


def _run(model, waveform):
  runner = Interpreter(model_content=model).get_signature_runner("serving_default")
  return runner(waveform=waveform[np.newaxis].astype(np.float32))


def test_metadata_round_trip_keeps_labels_and_sample_rate(tiny_model):
  model = metadata.attach(tiny_model, INFO)
  assert metadata.read_classifier_metadata(model) == INFO
  read, files = metadata.read_metadata(model)
  assert read.minParserVersion == b"1.3.0"  # AudioProperties: metadata schema 1.3.0
  assert files == {"labels.txt": "có\nlà\nnegative\n".encode("utf-8")}
  # Associated files are stored uncompressed (MediaPipe reads them in place).
  with zipfile.ZipFile(io.BytesIO(model)) as archive:
    assert [i.compress_type for i in archive.infolist()] == [zipfile.ZIP_STORED]
  # The interpreter ignores the metadata: the same outputs.
  waveform = np.random.RandomState(1).uniform(-1, 1, 100)
  for name, value in _run(tiny_model, waveform).items():
    np.testing.assert_array_equal(_run(model, waveform)[name], value)


def test_attach_again_replaces_the_metadata_and_the_labels(tiny_model):
  renamed = dataclasses.replace(INFO, labels=("a", "b", "c"), name="renamed")
  model = metadata.attach(metadata.attach(tiny_model, INFO), renamed)
  assert metadata.read_classifier_metadata(model) == renamed
  assert list(metadata.read_metadata(model)[1]) == ["labels.txt"]
  entries = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0)).metadata
  assert [e.name for e in entries].count(b"TFLITE_METADATA") == 1


def test_scores_only_keeps_the_probabilities_unchanged(tiny_model):
  assert metadata.output_names(tiny_model) == ("logits", "probabilities")
  variant = metadata.scores_only(tiny_model)
  assert metadata.output_names(variant) == ("probabilities",)
  waveform = np.random.RandomState(2).uniform(-1, 1, 100)
  got = _run(variant, waveform)
  assert list(got) == ["probabilities"]
  np.testing.assert_array_equal(got["probabilities"], _run(tiny_model, waveform)["probabilities"])
  with pytest.raises(ValueError, match="no output 'scores'"):
    metadata.scores_only(tiny_model, "scores")


def test_model_without_metadata_is_a_clear_error(tiny_model):
  with pytest.raises(ValueError, match="no TFLITE_METADATA metadata entry"):
    metadata.read_metadata(tiny_model)


def test_missing_mediapipe_is_a_clear_export_error(tiny_model, monkeypatch):
  monkeypatch.setitem(sys.modules, "mediapipe.tasks.metadata", None)
  with pytest.raises(ExportError, match="pip install --no-deps mediapipe"):
    metadata.attach(tiny_model, INFO)


def test_int8_input_gets_no_mediapipe_variant(tmp_path):
  path = tmp_path / "model_int8.tflite"
  card = {"input": {"dtype": "int8"}, "outputs": {"probabilities": {"dtype": "int8"}}}
  lines = []
  assert metadata.write_mediapipe_variant(str(path), card, log=lines.append) is None
  assert "no MediaPipe variant" in lines[0] and "float32" in lines[0]
  assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def kws_metadata_export(kws_model, kws_train_records, synthetic_corpus,  # noqa: F811
                        tmp_path_factory):
  out_dir, cards = _export(kws_model, kws_train_records, synthetic_corpus,
                           str(tmp_path_factory.mktemp("kws_metadata_export")), FORMATS,
                           qat_steps=2, qat_batch_size=4)
  return out_dir, cards


def test_every_kws_file_carries_metadata_and_has_a_mediapipe_variant(
    kws_metadata_export, kws_model):  # noqa: F811
  out_dir, cards = kws_metadata_export
  spec = model_dir_lib.read_spec(kws_model)
  for kind in FORMATS:
    info = metadata.read_classifier_metadata(
        open(os.path.join(out_dir, f"model_{kind}.tflite"), "rb").read())
    assert info.labels == tuple(spec.classes) and info.sample_rate == 16000
    assert info.channels == 1 and info.outputs == ("logits", "probabilities")
    assert kind in info.name and spec.data_fingerprint in info.version
    variant = os.path.join(out_dir, f"model_{kind}_mediapipe.tflite")
    assert metadata.read_classifier_metadata(open(variant, "rb").read()) == dataclasses.replace(
        info, outputs=("probabilities",))
    card = inference.read_card(variant)
    assert card["variant_of"] == f"model_{kind}.tflite" and card["format"] == kind
    assert card["outputs"] == {"probabilities": {"shape": [1, len(spec.classes)],
                                                 "dtype": "float32"}}
    assert card["input"] == {"shape": [1, 16000], "dtype": "float32"}
    assert card["size_bytes"] == os.path.getsize(variant)
    assert f"model_{kind}.tflite" in open(variant[:-len(".tflite")] + ".md").read()
    assert json.load(open(os.path.join(out_dir, f"model_{kind}.json")))["file"] == (
        f"model_{kind}.tflite")


def test_mediapipe_audio_classifier_agrees_with_kws_infer_on_every_test_clip(
    kws_metadata_export, kws_model, kws_train_records, synthetic_corpus):  # noqa: F811
  out_dir, _ = kws_metadata_export
  clips = examples_lib.load_examples(kws_model, kws_train_records, "test", 12,
                                     str(synthetic_corpus))
  classes = model_dir_lib.read_spec(kws_model).classes
  for kind in FORMATS:
    path = os.path.join(out_dir, f"model_{kind}_mediapipe.tflite")
    reference = inference.load_model(os.path.join(out_dir, f"model_{kind}.tflite"))
    with mp_audio.AudioClassifier.create_from_model_path(path) as classifier:
      for clip in clips:
        results = classifier.classify(audio_data.AudioData.create_from_array(
            clip.waveform, 16000))
        assert len(results) == 1 and len(results[0].classifications) == 1
        categories = results[0].classifications[0].categories
        expected = reference(clip.waveform)["probabilities"][0]
        assert categories[0].index == int(np.argmax(expected)), (kind, clip.id)
        assert categories[0].category_name == classes[categories[0].index]
        scores = {c.index: c.score for c in categories}
        np.testing.assert_allclose([scores[i] for i in range(len(classes))], expected,
                                   atol=1e-5)
