"""The logits of a ctc model over a split of ctc records, for decoders to compare.

``model_dir_logits`` runs a trained model dir on its own feature format (as
``kws-evaluate`` does); ``exported_logits`` runs an exported file (TFLite or
SavedModel, its model card beside it) on the records' ``raw`` audio, one
utterance at a time (as ``kws-infer`` does). Both return each utterance's
logits (float32 ``[frames, vocabulary]``, the valid frames only), its label
ids and the vocabulary.
"""
from typing import List, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kws_tf import data, inference, records, text
from kws_tf import model_dir as model_dir_lib
from kws_tf.evaluation import runner

Logits = Tuple[List[np.ndarray], List[List[int]], text.Vocabulary]


def model_dir_logits(model_dir: str, data_dir: str, split: str, limit: int = 0,
                     batch_size: int = 16) -> Logits:
  """Through the Keras model of ``model_dir`` (its best weights); ``limit``: at
  most this many utterances (0: all). ValueError for a kws model."""
  spec, metadata, parse = model_dir_lib.model_records(model_dir, data_dir)
  if spec.task != "ctc":
    raise ValueError(f"{model_dir} is a {spec.task} model, not ctc")
  model = model_dir_lib.load_trained_model(model_dir)
  paths = data.shard_paths(data_dir, spec.format, split, metadata)
  dataset = data.records_dataset(paths, metadata.compression).map(parse)
  if limit:
    dataset = dataset.take(limit)
  predictions = runner.predict(model, dataset.padded_batch(batch_size), "ctc")
  return (predictions["logits"], predictions["labels"],
          text.Vocabulary(spec.vocabulary["symbols"]))


def exported_logits(path: str, data_dir: str, split: str, limit: int = 0) -> Logits:
  """Through the exported file ``path`` on the records' raw audio. ValueError for
  a kws file or a vocabulary other than the records'."""
  card = inference.read_card(path)
  if card["task"] != "ctc":
    raise ValueError(f"{path} is a {card['task']} model, not ctc")
  metadata = records.load_metadata(data_dir)
  if metadata.vocabulary["symbols"] != card["labels"]["vocabulary"]:
    raise ValueError(f"{path} and {data_dir} have different vocabularies")
  model = inference.load_model(path)
  parse = data.make_parser(metadata, "raw", normalize=False)
  paths = data.shard_paths(data_dir, "raw", split, metadata)
  dataset = data.records_dataset(paths, metadata.compression).map(parse)
  if limit:
    dataset = dataset.take(limit)
  logits, labels = [], []
  for example in dataset:
    outputs = model(example["features"].numpy().reshape(-1))
    logits.append(outputs["logits"][0][:int(outputs["logit_frames"][0])])
    labels.append(example["labels"].numpy().tolist())
  return logits, labels, text.Vocabulary(card["labels"]["vocabulary"])


def record_ids(data_dir: str, split: str, limit: int = 0) -> List[str]:
  """The utterance ids of the records' ``split``, in the order both functions above
  return their logits (at most ``limit``; 0: all)."""
  metadata = records.load_metadata(data_dir)
  fmt = next(iter(metadata.formats))  # every format holds the same records in the same order
  dataset = data.records_dataset(data.shard_paths(data_dir, fmt, split, metadata),
                                 metadata.compression)
  if limit:
    dataset = dataset.take(limit)
  spec = {"id": tf.io.FixedLenFeature([], tf.string)}
  return [tf.io.parse_single_example(record, spec)["id"].numpy().decode() for record in dataset]
