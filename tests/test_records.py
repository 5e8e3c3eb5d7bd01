"""kws_tf.records.RecordsMetadata: metadata.json as the converter writes it, typed."""
import copy
import dataclasses
import json
import os
import re

import pytest

from kws_tf import records


def _converted(records_dir):
  """The metadata.json dict the converter wrote."""
  return records.read_json(os.path.join(records_dir, records.METADATA_FILE))


def _write(folder, metadata):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, records.METADATA_FILE), "w", encoding="utf-8") as f:
    json.dump(metadata, f)
  return str(folder)


def test_converter_output_round_trips_and_is_typed(kws_train_records):
  on_disk = _converted(kws_train_records)
  metadata = records.load_metadata(kws_train_records)
  assert isinstance(metadata, records.RecordsMetadata)
  assert metadata.to_json() == on_disk
  assert records.RecordsMetadata.from_json(on_disk) == metadata
  with pytest.raises(dataclasses.FrozenInstanceError):
    metadata.task = "ctc"  # type: ignore[misc]

  # The sample rate is written once: in each format's front-end config only.
  assert "sample_rate" not in on_disk["params"] and "feature_params" not in on_disk["params"]
  assert metadata.sample_rate == 16000
  assert metadata.task == "kws" and metadata.classes[-1] == "negative"
  assert metadata.negative_label == len(metadata.classes) - 1
  assert metadata.compression == "none"
  assert metadata.clip_seconds == 1.0 and metadata.clip_samples == 16000
  assert metadata.context_seconds == 0.5 and metadata.context_samples == 8000
  assert metadata.raw_clip_samples == 32000
  mfcc = metadata.formats["mfcc"]
  assert mfcc.dir == "mfcc" and not mfcc.raw
  assert mfcc.num_channels == mfcc.feature_config.num_channels
  assert mfcc.frame_seconds == pytest.approx(0.01)  # hop 160 samples at 16 kHz
  assert metadata.formats["logmel"].num_channels == 80
  train = metadata.splits["train"]
  assert train.examples == sum(s.examples for s in train.shards) > 0
  assert train.shards[0].name == records.shard_name("train", 0, len(train.shards))
  assert set(train.max_frames) == {"mfcc", "logmel"}
  assert metadata.normalization_splits == ["train"]
  assert len(metadata.normalization["mfcc"]["mean"]) == mfcc.num_channels


def test_ctc_and_raw_values():
  raw = records.FormatInfo(dir="raw", dtype="int16", num_channels=1,
                           params={"format": "raw", "sample_rate": 8000})
  assert raw.raw and raw.sample_rate == 8000 and raw.frame_seconds == 1 / 8000
  slow = records.FormatInfo(dir="logmel", dtype="float32", num_channels=80,
                            params={"format": "logmel", "sample_rate": 16000, "frame_step": 320})
  assert slow.frame_seconds == pytest.approx(0.02)
  params = records.ConversionParams(
      corpus="vivos", splits=["train"], formats=["raw"], task="ctc", examples_per_shard=10,
      limit=None, compression="gzip", min_seconds=0.1, max_seconds=30.0, vocab_source="splits")
  ctc = records.RecordsMetadata(
      schema_version=records.SCHEMA_VERSION, tool="t", tool_version="0", fingerprint="ab",
      task="ctc", params=params, formats={"raw": raw}, splits={}, normalization={},
      normalization_splits=["train"], skipped=0,
      vocabulary={"blank_index": 0, "symbols": ["<blank>", " "]})
  assert ctc.clip_samples is None and ctc.raw_clip_samples is None
  assert ctc.context_seconds == 0.0 and ctc.negative_label is None
  assert ctc.compression == "gzip" and ctc.sample_rate == 8000
  assert "keywords" not in ctc.to_json()["params"] and ctc.to_json()["params"]["limit"] is None
  assert records.RecordsMetadata.from_json(ctc.to_json()) == ctc
  with pytest.raises(ValueError, match="ctc records need vocabulary"):
    dataclasses.replace(ctc, vocabulary=None)
  with pytest.raises(ValueError, match="different sample rates"):
    dataclasses.replace(ctc, formats={"raw": raw, "logmel": slow})


def test_records_with_the_sample_rate_twice_still_load(kws_train_records, tmp_path):
  """Records converted before the sample rate was written once: params repeat it."""
  old = _converted(kws_train_records)
  old["params"]["sample_rate"] = 16000
  old["params"]["feature_params"] = {f: info["params"] for f, info in old["formats"].items()}
  assert records.load_metadata(_write(tmp_path / "old", old)) == \
      records.load_metadata(kws_train_records)
  old["params"]["sample_rate"] = 8000
  with pytest.raises(ValueError, match=r"params.sample_rate 8000 differs from "
                                       r"formats\.\w+\.params\.sample_rate 16000"):
    records.load_metadata(_write(tmp_path / "contradictory", old))


@pytest.mark.parametrize("damage, message", [
    (lambda m: m["formats"]["mfcc"].pop("dir"), "formats.mfcc: missing keys ['dir']"),
    (lambda m: m.pop("fingerprint"), "metadata: missing keys ['fingerprint']"),
    (lambda m: m.pop("classes"), "metadata: missing keys ['classes']"),
    (lambda m: m["splits"]["train"].update(colour="red"),
     "splits.train: unknown keys ['colour']"),
    (lambda m: m["params"].pop("compression"), "params: missing keys ['compression']"),
    (lambda m: m["splits"]["test"]["shards"][0].pop("examples"),
     "splits.test.shards[0]: missing keys ['examples']"),
])
def test_malformed_metadata_names_the_file_and_the_keys(kws_train_records, tmp_path, damage,
                                                        message):
  metadata = copy.deepcopy(_converted(kws_train_records))
  damage(metadata)
  folder = _write(tmp_path / "records", metadata)
  path = os.path.join(folder, records.METADATA_FILE)
  with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
    records.load_metadata(folder)


def test_missing_file_and_other_schema_are_named(kws_train_records, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a finished create_tfrecords output"):
    records.load_metadata(str(tmp_path))
  metadata = dict(_converted(kws_train_records), schema_version=records.SCHEMA_VERSION + 1)
  folder = _write(tmp_path / "future", metadata)
  with pytest.raises(ValueError, match=re.escape(os.path.join(folder, records.METADATA_FILE)) +
                     f": schema_version {records.SCHEMA_VERSION + 1}"):
    records.load_metadata(folder)
