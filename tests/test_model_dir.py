"""kws_tf.model_dir: the ModelSpec of model.json, its derived values, weights and errors."""
import dataclasses
import json
import os
import re

import kws_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from kws_tf import features
from kws_tf import model_dir as model_dir_lib


def kws_spec_json():
  """A model.json of a kws student as kws-train writes it (mfcc, quantized distillation)."""
  return {
      "name": "wav2letter_kws_tiny", "task": "kws", "role": "student", "num_channels": 39,
      "num_classes": 3, "projection_dim": 0, "params": {"head_dropout": 0.1}, "format": "mfcc",
      "feature_params": features.default_config("mfcc").to_dict(),
      "normalization": {"mean": [0.5] * 39, "std": [2.0] * 39},
      "data_fingerprint": "ab12", "classes": ["một", "hai", "negative"],
      "quantization": {"bits": 4, "bucket_size": 256, "stochastic": False,
                       "keep_first_last_float": False}}


def ctc_spec_json():
  """A model.json of a ctc teacher: Whisper log-mel padded to 30 s, no normalisation."""
  return {
      "name": "whisper_teacher", "task": "ctc", "role": "teacher", "num_channels": 80,
      "num_classes": 5, "projection_dim": 16, "params": {"encoder": {"d_model": 32}},
      "format": "logmel",
      "feature_params": features.default_config("logmel", pad_to_seconds=30.0).to_dict(),
      "normalization": None, "data_fingerprint": "cd34",
      "vocabulary": {"blank_index": 0, "symbols": ["<blank>", " ", "a", "b", "c"]}}


@pytest.mark.parametrize("make", [kws_spec_json, ctc_spec_json])
def test_json_round_trip_gives_the_same_dict(make, tmp_path):
  original = make()
  spec = model_dir_lib.ModelSpec.from_json(original)
  assert spec.to_json() == original
  model_dir_lib.write_spec(str(tmp_path), spec)
  with open(tmp_path / "model.json", encoding="utf-8") as f:
    assert json.load(f) == original
  assert model_dir_lib.read_spec(str(tmp_path)) == spec


def test_spec_is_frozen_and_typed():
  spec = model_dir_lib.ModelSpec.from_json(kws_spec_json())
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.name = "other"  # type: ignore[misc]
  assert spec.classes[-1] == "negative" and spec.vocabulary is None
  assert "quantization" not in dataclasses.replace(spec, quantization=None).to_json()


def test_derived_values_from_the_feature_params():
  kws = model_dir_lib.ModelSpec.from_json(kws_spec_json())
  assert kws.sample_rate == 16000
  assert kws.frame_seconds == pytest.approx(0.01)  # mfcc: hop 160 samples at 16 kHz
  assert kws.clip_samples is None and kws.clip_seconds is None
  ctc = model_dir_lib.ModelSpec.from_json(ctc_spec_json())
  assert ctc.frame_seconds == pytest.approx(0.01)  # logmel: hop 160 samples at 16 kHz
  assert ctc.clip_samples == 480000 and ctc.clip_seconds == 30.0
  slow = dict(ctc_spec_json(), feature_params=features.default_config(
      "logmel", sample_rate=8000, frame_step=160).to_dict())
  assert model_dir_lib.ModelSpec.from_json(slow).frame_seconds == pytest.approx(0.02)
  raw = dict(kws_spec_json(), format="raw", num_channels=1,
             feature_params=features.default_config("raw").to_dict())
  assert model_dir_lib.ModelSpec.from_json(raw).frame_seconds == 1 / 16000


def test_time_stride_and_output_frames():
  # A kws student gives one logit vector per clip: no frame-level output.
  kws = model_dir_lib.ModelSpec.from_json(kws_spec_json())
  assert kws.time_stride is None and kws.output_frame_seconds is None
  # ctc logits (and a Whisper teacher's encoder frames): 2 input frames each.
  ctc = model_dir_lib.ModelSpec.from_json(ctc_spec_json())
  assert ctc.time_stride == 2 and ctc.output_frame_seconds == pytest.approx(0.02)
  student = dict(kws_spec_json(), task="ctc", classes=None, name="wav2letter",
                 vocabulary=ctc_spec_json()["vocabulary"])
  assert model_dir_lib.ModelSpec.from_json(student).time_stride == 2
  teacher = dict(ctc_spec_json(), task="kws", vocabulary=None, classes=["a", "negative"],
                 feature_params=features.default_config("logmel", frame_step=320).to_dict())
  spec = model_dir_lib.ModelSpec.from_json(teacher)
  assert spec.time_stride == 2 and spec.output_frame_seconds == pytest.approx(0.04)


def test_malformed_specs_are_refused(tmp_path):
  broken = kws_spec_json()
  del broken["role"]
  broken["colour"] = "red"
  with pytest.raises(ValueError, match=r"missing keys \['role'\], unknown keys \['colour'\]"):
    model_dir_lib.ModelSpec.from_json(broken)
  with pytest.raises(ValueError, match="a ctc model spec needs vocabulary"):
    model_dir_lib.ModelSpec.from_json(dict(kws_spec_json(), task="ctc"))
  with open(tmp_path / "model.json", "w", encoding="utf-8") as f:
    json.dump(broken, f)
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'model.json'}: not a model spec")):
    model_dir_lib.read_spec(str(tmp_path))


def test_missing_model_json_and_checkpoints_are_named(tmp_path):
  missing = re.escape(f"{tmp_path / 'model.json'} not found")
  with pytest.raises(FileNotFoundError, match=missing):
    model_dir_lib.read_spec(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=missing):
    model_dir_lib.load_trained_model(str(tmp_path))
  model_dir_lib.write_spec(str(tmp_path), model_dir_lib.ModelSpec.from_json(kws_spec_json()))
  for which, folder in (("best", "best"), ("last", "checkpoints")):
    with pytest.raises(FileNotFoundError,
                       match=re.escape(f"no {which} checkpoint in {tmp_path / folder}")):
      model_dir_lib.load_trained_model(str(tmp_path), which)


def test_trained_weights_are_restored(tmp_path):
  model_dir = str(tmp_path)
  spec = model_dir_lib.ModelSpec.from_json(kws_spec_json())
  model_dir_lib.write_spec(model_dir, spec)
  model = model_dir_lib.build_model(spec)
  saved = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                     os.path.join(model_dir, "best"), max_to_keep=1).save(3)
  assert model_dir_lib.checkpoint_path(model_dir) == saved
  assert model_dir_lib.checkpoint_path(model_dir, saved) == saved
  for checkpoint in ("best", saved):
    loaded = model_dir_lib.load_trained_model(model_dir, checkpoint)
    for a, b in zip(model.variables, loaded.variables):
      np.testing.assert_array_equal(a.numpy(), b.numpy())
