"""FitNets (Romero et al. 2014): a teacher's middle layer guides a thin student.

Stage 1 (hints): the student up to its *guided layer*, followed by a
*regressor*, is trained to predict the teacher's *hint*, the output of the
teacher's encoder layer ``--up_to`` stored by ``create_guidance
--guidance=hints``. Here the hint is a sequence ``[frames, d]`` at the
teacher's frame rate, which the guidance metadata records (``frame_seconds``:
the teacher's feature hop times its encoder's stride, 20 ms for Whisper's
10 ms log-mel), so the regressor is

  * for a 2-D student (``[batch, time, frequency, channels]``: wav2letter,
    MobileNetV3, ResNet) a mean over the frequency axis first, giving
    ``[batch, time, channels]``;
  * a time alignment to the hint's frames: frames ``k`` times finer than the
    hint's are averaged ``k`` at a time, frames ``k`` times coarser are
    repeated ``k`` times (any other ratio is an error);
  * a 1x1 convolution to the hint's ``d`` channels.

The hint loss is the mean squared error over the frames both sides have (the
valid frames of the shorter) and the hint's channels.

Stage 2 (knowledge distillation): the whole student, initialised with the
stage-1 weights of the layers up to the guided layer (the regressor is
dropped), is trained with the ``distill`` loss whose KD weight is multiplied
by lambda (``kws_tf.distill.objectives.FitNetKD``)::

  hard_weight * hard + lambda * alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
      + feature_weight * feature

with lambda annealed linearly from ``kd_weight_start`` to ``kd_weight_end``
over the stage (4 to 1 in the paper). The paper's ``H(y, P_S) + lambda *
H(P_T^tau, P_S^tau)`` (the soft cross entropy and the KL differ by a
constant) is ``alpha = 1 / T^2``, ``beta = 1``.
"""
import os
import re
from typing import Dict, List, Optional, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf import records

STAGE1_DIR = "fitnet_stage1"
SPEC_FILE = "fitnet.json"
# Frames of the probe input that measures a guided layer's time stride:
# divisible by every stride a student can have (2^k, 3, 5).
_PROBE_FRAMES = 960
_BLOCK = re.compile(r"^((?:conv|block|stage|layer)\d+)(?:_|$)")


class FitNetError(ValueError):
  """A guided layer and a hint that cannot be matched (the message says why)."""


def block_outputs(student: keras.Model) -> List[str]:
  """Names of the last layer of each numbered block (``conv3_*``, ``block5_*``...).

  The blocks of a student are the runs of layers that share a numbered name
  prefix, in model order; only layers with a 4-D output count.
  """
  last: Dict[str, str] = {}
  for layer in student.layers:
    match = _BLOCK.match(layer.name)
    if match and _rank(layer) == 4:
      last[match.group(1)] = layer.name
  return list(last.values())


def default_guided_layer(student: keras.Model) -> str:
  """The output of the student's middle block (Romero et al. guide the middle)."""
  blocks = block_outputs(student)
  if not blocks:
    raise FitNetError(f"{student.name} has no numbered blocks to guide; set "
                      "fitnet.guided_layer to one of its layers")
  return blocks[(len(blocks) - 1) // 2]


def _rank(layer) -> Optional[int]:
  try:
    return len(layer.output.shape)
  except AttributeError:
    return None


def guided_output(student: keras.Model, layer_name: str) -> tf.Tensor:
  """The guided layer's symbolic output as ``[batch, time, channels]``.

  A 4-D output ``[batch, time, frequency, channels]`` is averaged over
  frequency. FitNetError names the layer and the student's candidates when the
  layer is missing or not a time sequence.
  """
  try:
    layer = student.get_layer(layer_name)
  except ValueError:
    raise FitNetError(f"{student.name} has no layer {layer_name!r}; its block outputs are "
                      f"{', '.join(block_outputs(student))}") from None
  output = layer.output
  if isinstance(output, (list, tuple, dict)) or len(output.shape) not in (3, 4):
    raise FitNetError(f"guided layer {layer_name!r} of {student.name} must give "
                      "[batch, time, channels] or [batch, time, frequency, channels]; it gives "
                      f"{getattr(output, 'shape', type(output).__name__)}")
  if len(output.shape) == 4:
    output = keras.layers.Lambda(lambda x: tf.reduce_mean(x, axis=2),
                                 name="fitnet_frequency_mean")(output)
  return output


def time_stride(student: keras.Model, layer_name: str) -> int:
  """Input frames per output frame of the guided layer (measured on a probe)."""
  probe = keras.Model(student.input, student.get_layer(layer_name).output)
  channels = student.input["features"].shape[-1]
  out = probe({"features": tf.zeros([1, _PROBE_FRAMES, channels]),
               "num_frames": tf.constant([_PROBE_FRAMES])}, training=False)
  frames = int(out.shape[1])
  if frames < 1 or _PROBE_FRAMES % frames:
    raise FitNetError(f"guided layer {layer_name!r} gives {frames} frames for "
                      f"{_PROBE_FRAMES} input frames: not a whole time stride")
  return _PROBE_FRAMES // frames


def alignment(student_frame_seconds: float, hint_frame_seconds: float,
              layer_name: str) -> Tuple[str, int]:
  """How the guided layer's frames become the hint's: ``(kind, factor)``.

  ``("pool", k)``: the student's frames are ``k`` times finer (average ``k``);
  ``("repeat", k)``: ``k`` times coarser (repeat each ``k`` times); ``k = 1``
  is ``("pool", 1)``, nothing to do. FitNetError for any other ratio.
  """
  ratio = hint_frame_seconds / student_frame_seconds
  if abs(ratio - round(ratio)) < 1e-6 and round(ratio) >= 1:
    return "pool", int(round(ratio))
  inverse = 1.0 / ratio
  if abs(inverse - round(inverse)) < 1e-6:
    return "repeat", int(round(inverse))
  raise FitNetError(
      f"guided layer {layer_name!r} gives a frame every {student_frame_seconds * 1000:g} ms "
      f"and the hint a frame every {hint_frame_seconds * 1000:g} ms: one must be a whole "
      "multiple of the other; guide another layer")


@keras.saving.register_keras_serializable(package="kws_tf")
class HintFrames(keras.layers.Layer):
  """int32 ``[batch]``: valid hint-rate frames of the guided layer.

  ``ceil(num_frames / stride)`` frames at the guided layer, then ``ceil(. / k)``
  after pooling by ``k`` or ``. * k`` after repeating ``k`` times.
  """

  def __init__(self, stride: int, kind: str, factor: int, **kwargs):
    super().__init__(**kwargs)
    self.stride, self.kind, self.factor = stride, kind, factor

  def call(self, num_frames):
    frames = (tf.cast(num_frames, tf.int32) + self.stride - 1) // self.stride
    if self.kind == "pool":
      return (frames + self.factor - 1) // self.factor
    return frames * self.factor

  def get_config(self):
    return dict(super().get_config(), stride=self.stride, kind=self.kind, factor=self.factor)


def hint_model(student: keras.Model, guided_layer: str, hint_dim: int, stride: int,
               kind: str, factor: int) -> keras.Model:
  """Stage 1's model: the student up to ``guided_layer`` plus the regressor.

  Shares its layers (and so its weights) with ``student``. Inputs: the
  student's (``features`` ``[batch, frames, channels]``, ``num_frames``).
  Outputs: ``hint`` float32 ``[batch, hint_frames, hint_dim]`` and
  ``hint_frames`` int32 ``[batch]`` (its valid frames).
  """
  x = guided_output(student, guided_layer)
  if kind == "pool" and factor > 1:
    x = keras.layers.AveragePooling1D(factor, factor, padding="same", name="fitnet_pool")(x)
  elif kind == "repeat":
    x = keras.layers.UpSampling1D(factor, name="fitnet_repeat")(x)
  hint = keras.layers.Conv1D(hint_dim, 1, dtype="float32", name="fitnet_regressor")(x)
  frames = HintFrames(stride, kind, factor, name="fitnet_hint_frames")(
      student.input["num_frames"])
  return keras.Model(student.input, {"hint": hint, "hint_frames": frames},
                     name=f"{student.name}_hints")


def hint_error_sums(student_hint, student_frames, teacher_hint,
                    teacher_frames) -> Tuple[tf.Tensor, tf.Tensor]:
  """Summed squared error and the count of (frame, channel) values it sums.

  Args:
    student_hint: float ``[B, Ts, d]``, the regressor's output.
    student_frames: int ``[B]``, its valid frames.
    teacher_hint: float ``[B, Th, d]``, the teacher's hint (no gradient).
    teacher_frames: int ``[B]``, its valid frames.

  Returns:
    float32 scalars ``(sum, count)`` over the frames before
    ``min(student_frames, teacher_frames)``.
  """
  frames = tf.minimum(tf.shape(student_hint)[1], tf.shape(teacher_hint)[1])
  student_hint = tf.cast(student_hint[:, :frames], tf.float32)
  teacher_hint = tf.stop_gradient(tf.cast(teacher_hint[:, :frames], tf.float32))
  valid = tf.minimum(tf.cast(student_frames, tf.int32), tf.cast(teacher_frames, tf.int32))
  mask = tf.sequence_mask(valid, maxlen=frames)
  squared = tf.reduce_sum(tf.square(student_hint - teacher_hint), axis=-1)
  total = tf.reduce_sum(tf.where(mask, squared, tf.zeros_like(squared)))
  count = tf.cast(tf.reduce_sum(tf.cast(mask, tf.int32)) * tf.shape(teacher_hint)[-1],
                  tf.float32)
  return total, count


def hint_loss(student_hint, student_frames, teacher_hint, teacher_frames) -> tf.Tensor:
  """Mean squared error per valid (frame, channel) value; see ``hint_error_sums``."""
  total, count = hint_error_sums(student_hint, student_frames, teacher_hint, teacher_frames)
  return tf.math.divide_no_nan(total, count)


def check_frames(student_frames, teacher_frames, factor: int, guided_layer: str,
                 hint_layer) -> None:
  """FitNetError unless the aligned student frames match the hint's (+- factor + 1).

  Args:
    student_frames, teacher_frames: int ``[B]`` of one batch.
    factor: the alignment factor (its rounding can add frames).
  """
  difference = tf.reduce_max(tf.abs(tf.cast(student_frames, tf.int32) -
                                    tf.cast(teacher_frames, tf.int32)))
  if int(difference) > factor + 1:
    raise FitNetError(
        f"guided layer {guided_layer!r} gives {student_frames.numpy().tolist()} frames at the "
        f"hint's rate for examples whose hint (teacher layer {hint_layer}) has "
        f"{teacher_frames.numpy().tolist()}: the student and the teacher do not cover the "
        "same audio at the same frame rate (check the feature formats and the guided layer)")


def check_model_frames(model: keras.Model, dataset: tf.data.Dataset, fitnet_plan: dict) -> None:
  """``check_frames`` on the first batch of ``dataset`` (hint guidance joined)
  run through the hint ``model``."""
  batch = next(iter(dataset))
  outputs = model({"features": batch["features"], "num_frames": batch["num_frames"]},
                  training=False)
  check_frames(outputs["hint_frames"], batch["guidance_frames"], fitnet_plan["factor"],
               fitnet_plan["guided_layer"], fitnet_plan["hint_layer"])


class HintError:
  """Hint MSE of a hint model over whole datasets, one traced function for all.

  ``HintError(model)(dataset, what)`` is the mean squared error over every
  valid (frame, channel) value of ``dataset`` (batches with hint guidance
  joined), a float; FitNetError naming ``what`` when it has no hint frames.
  """

  def __init__(self, model: keras.Model):
    @tf.function(reduce_retracing=True)
    def sums(batch):
      outputs = model({"features": batch["features"], "num_frames": batch["num_frames"]},
                      training=False)
      return hint_error_sums(outputs["hint"], outputs["hint_frames"], batch["guidance_hint"],
                             batch["guidance_frames"])

    self._sums = sums

  def __call__(self, dataset: tf.data.Dataset, what: str) -> float:
    total = count = 0.0
    for batch in dataset:
      batch_total, batch_count = self._sums({k: v for k, v in batch.items() if k != "id"})
      total += float(batch_total)
      count += float(batch_count)
    if count == 0:
      raise FitNetError(f"{what} has no hint frames to measure")
    return total / count


def kd_weight(step, steps: int, start: float, end: float) -> tf.Tensor:
  """lambda at 0-based ``step`` of ``steps``: linear from ``start`` to ``end``."""
  progress = tf.cast(step, tf.float32) / float(max(steps - 1, 1))
  return start + (end - start) * tf.minimum(progress, 1.0)


def hint_metadata(guidance_dir: str) -> dict:
  """The hint's layer, channels and frame duration from a hints guidance folder.

  ``hint_frame_seconds`` is the teacher's frame duration as create_guidance
  recorded it (``frame_seconds``); ``plan`` aligns the guided layer to it.
  """
  meta = records.read_json(os.path.join(guidance_dir, records.METADATA_FILE))
  hint = meta.get("outputs", {}).get("hint")
  if hint is None or len(hint["shape"]) != 2:
    raise FitNetError(f"{guidance_dir} holds no frame hints (outputs: "
                      f"{', '.join(meta.get('outputs', {}))}); write them with "
                      "create_guidance --guidance=hints --up_to=<teacher layer>")
  if meta.get("frame_seconds") is None:
    raise FitNetError(f"{guidance_dir} records no frame rate for its hints (frame_seconds); "
                      "write them again with create_guidance")
  return {"hint_layer": meta["layer"], "hint_splits": meta["splits"],
          "hint_dim": int(hint["shape"][1]), "hint_frame_seconds": float(meta["frame_seconds"])}


def plan(student: keras.Model, guided_layer: str, input_frame_seconds: float,
         hints: dict) -> dict:
  """Everything that builds the hint model, as written to ``fitnet.json``."""
  guided_layer = guided_layer or default_guided_layer(student)
  guided_output(student, guided_layer)  # checks the layer
  stride = time_stride(student, guided_layer)
  kind, factor = alignment(stride * input_frame_seconds, hints["hint_frame_seconds"],
                           guided_layer)
  return dict(hints, guided_layer=guided_layer, stride=stride, alignment=kind, factor=factor,
              student_frame_seconds=stride * input_frame_seconds)


def stage1_model(student: keras.Model, guidance_dir: str, guided_layer: str,
                 input_frame_seconds: float) -> Tuple[keras.Model, dict]:
  """Stage 1's model over ``student`` and its ``plan``, for the hints in ``guidance_dir``.

  ``guided_layer`` "" picks the middle block; ``input_frame_seconds`` is the
  hop of the student's input features. FitNetError when the layer or the
  hints do not fit.
  """
  fitnet_plan = plan(student, guided_layer, input_frame_seconds, hint_metadata(guidance_dir))
  return build_hint_model(student, fitnet_plan), fitnet_plan


def build_hint_model(student: keras.Model, fitnet_plan: dict) -> keras.Model:
  """``hint_model`` from a ``plan`` (or a stage-1 ``fitnet.json``)."""
  p = fitnet_plan
  return hint_model(student, p["guided_layer"], p["hint_dim"], p["stride"], p["alignment"],
                    p["factor"])


def initialise_from_stage1(student: keras.Model, stage1_dir: str) -> str:
  """Sets the student's layers up to the guided layer to stage 1's best weights.

  Returns the checkpoint read. FileNotFoundError when stage 1 has not saved
  any; the checkpoint must match the student built the same way.
  """
  spec_path = os.path.join(stage1_dir, SPEC_FILE)
  best = tf.train.latest_checkpoint(os.path.join(stage1_dir, "best"))
  if not os.path.exists(spec_path) or best is None:
    raise FileNotFoundError(f"no finished FitNet stage 1 in {stage1_dir} (need {SPEC_FILE} and "
                            "best/): run --fitnet_stage=1 first")
  hints = build_hint_model(student, records.read_json(spec_path))
  tf.train.Checkpoint(model=hints).restore(best).expect_partial() \
      .assert_existing_objects_matched()
  return best
