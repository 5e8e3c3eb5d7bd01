"""What a run needs from TensorFlow besides its model: seeds, determinism and
precision, the distribution strategy, each replica's share of a worker's
batch, and the random generators of the model's layers (checkpointed with it)."""
from typing import Dict, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf import config as config_lib


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The distribution strategy called ``name`` (see ``TrainConfig.strategy``)."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"unknown strategy {name!r}")


def workers(strategy: tf.distribute.Strategy) -> Tuple[int, int]:
  """(number of workers, this worker's index): (1, 0) unless multi-worker."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return 1, 0
  return resolver.cluster_spec().num_tasks("worker"), resolver.task_id or 0


def replica_slice(batch: Dict[str, tf.Tensor], context,
                  local_replicas: int) -> Dict[str, tf.Tensor]:
  """The part of a worker's batch that one of its ``local_replicas`` replicas
  trains on: an equal slice of the batch axis by replica index."""
  index = context.replica_id_in_sync_group % local_replicas
  size = tf.shape(batch["features"])[0] // local_replicas
  return {k: v[index * size:(index + 1) * size] for k, v in batch.items()}


def random_generators(model: keras.Model) -> Dict[str, tf.random.Generator]:
  """The tf.random.Generator of every random layer (dropout, noise), by layer path.

  tf-keras keeps these generators out of ``model.weights`` and checkpoints;
  the train loop checkpoints them itself so dropout masks continue exactly
  after a resume. Needs ``keras.backend.experimental.enable_tf_random_generator``
  before the model is built.
  """
  found = {}

  def visit(layer, path):
    generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
    if isinstance(generator, tf.random.Generator):
      found[path] = generator
    for child in getattr(layer, "_self_tracked_trackables", []):
      if isinstance(child, keras.layers.Layer):
        visit(child, f"{path}/{child.name}")

  visit(model, model.name)
  return found


def set_up(train: config_lib.TrainConfig) -> None:
  """Seeds, op determinism and the mixed-precision policy of ``train``, and
  tf.random.Generator-backed random layers (see ``random_generators``)."""
  keras.utils.set_random_seed(train.seed)
  keras.backend.experimental.enable_tf_random_generator()
  if train.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.mixed_precision.set_global_policy(train.mixed_precision)
