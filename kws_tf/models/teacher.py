"""Teachers: the Whisper encoder (PhoWhisper port or from scratch) with a KWS or CTC head.

Registered as ``whisper_teacher`` (``kws_tf.models.registry``); the model
contract is that of ``kws_tf.models``, on Whisper log-mel input
(``features [batch, frames, num_mel_bins]``, 10 ms frames, at most 3000).

* kws: encoder -> ``pooling`` over the valid 20 ms frames (``mean``, or
  ``attention``: ``heads.AttentivePooling``, what a frozen pretrained encoder
  needs, as its frames cannot learn to carry the word) -> adaptation layers
  (``hidden_sizes``, default 512 -> 256, ReLU and dropout: the layout of the
  PyTorch Vietnamese KWS distillation project) -> ``num_classes`` logits.
  ``projection`` is the last adaptation layer's output ``[batch, 256]``.
* ctc: encoder -> Dense(``ctc_hidden``), GELU, LayerNorm -> Dense to the
  project's character vocabulary + blank, one frame every 20 ms
  (``logit_frames = ceil(num_frames / 2)``). ``projection`` is the
  LayerNorm output ``[batch, frames, ctc_hidden]``.

``projection`` (always given) is the teacher feature that feature distillation
matches: a student's feature projector must have its size (``projection_dim``).

The encoder comes from ``checkpoint`` (a local Hugging Face Whisper /
PhoWhisper directory, or a CTranslate2 / faster-whisper Whisper directory,
told apart by their files) or, without one, from ``encoder`` (a small
Whisper-architecture config) with random weights. ``trainable_blocks``:
``0`` freezes it (the default with a checkpoint), ``k`` trains the top k
blocks, ``-1`` trains everything (the default from scratch).
"""
from typing import Any, Dict, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf.models import heads, registry, whisper

# A from-scratch encoder small enough to train on 2 CPU cores (about 3.2 M
# parameters): Whisper's architecture, a quarter of PhoWhisper-base's width.
SCRATCH_ENCODER = {"num_mel_bins": 80, "d_model": 192, "encoder_layers": 4,
                   "encoder_attention_heads": 4, "encoder_ffn_dim": 768,
                   "max_source_positions": 1500, "dropout": 0.1}


def _encoder(checkpoint: Optional[str], encoder: Optional[Dict[str, Any]],
             trainable_blocks: Optional[int], mask_padding: bool) -> whisper.WhisperEncoder:
  if checkpoint:
    layer = whisper.load_encoder(checkpoint, mask_padding=mask_padding, name="encoder")
    default_trainable = 0
  else:
    layer = whisper.random_encoder({**SCRATCH_ENCODER, **(encoder or {})},
                                   mask_padding=mask_padding, name="encoder")
    default_trainable = -1
  whisper.set_trainable_blocks(
      layer, default_trainable if trainable_blocks is None else trainable_blocks)
  return layer


def pooled_frames(hidden, features, num_frames, name: str, pooling: str = "mean",
                  attention_units: int = 128):
  """Pools encoder frames ``hidden [batch, ceil(frames / 2), d]`` over valid frames.

  ``features`` and ``num_frames`` are the model's inputs (they give the frame
  mask at the encoder's time stride 2); ``pooling`` is ``mean`` or
  ``attention``. Returns ``[batch, d]``.
  """
  mask = heads.FrameMask(whisper.TIME_STRIDE, name=f"{name}_mask")([features, num_frames])
  frames_4d = keras.layers.Reshape((-1, 1, hidden.shape[-1]), name=f"{name}_4d")(hidden)
  if pooling == "attention":
    return heads.AttentivePooling(attention_units, name=name)([frames_4d, mask])
  return heads.MaskedMean(name=name)([frames_4d, mask])


@registry.register("whisper_teacher", time_stride=whisper.TIME_STRIDE)
def whisper_teacher(*, task: str, num_channels: int, num_classes: int,
                    projection_dim: int = 0, checkpoint: Optional[str] = None,
                    encoder: Optional[Dict[str, Any]] = None,
                    trainable_blocks: Optional[int] = None, mask_padding: bool = True,
                    hidden_sizes: Sequence[int] = (512, 256), dropout: float = 0.1,
                    pooling: str = "mean", attention_units: int = 128,
                    ctc_hidden: int = 256) -> keras.Model:
  """The KWS or CTC teacher (module docstring).

  Args:
    task: ``kws`` or ``ctc``.
    num_channels: mel bins of the input; must match the encoder's.
    num_classes: kws classes, or the ctc vocabulary size (blank included).
    projection_dim: 0, or the size of ``projection`` (``hidden_sizes[-1]``
      for kws, ``ctc_hidden`` for ctc): a teacher's projection is its feature
      layer, always an output, never a separate projector.
    checkpoint: a local Hugging Face or CTranslate2 Whisper directory, or None.
    encoder: overrides of ``SCRATCH_ENCODER`` when there is no checkpoint.
    trainable_blocks: see the module docstring.
    mask_padding: mask attention to the zero padding of a batch, so that each
      example's output is that of the example alone.
    hidden_sizes: kws adaptation layers.
    dropout: dropout after each adaptation layer (kws) or the ctc hidden layer.
    pooling: kws; ``mean`` or ``attention`` over the encoder's valid frames.
    attention_units: width of the attention scorer (``pooling=attention``).
    ctc_hidden: width of the ctc hidden layer.
  """
  if task not in ("kws", "ctc"):
    raise ValueError(f"task must be kws or ctc, got {task!r}")
  if pooling not in ("mean", "attention"):
    raise ValueError(f"pooling must be mean or attention, got {pooling!r}")
  if checkpoint and encoder:
    raise ValueError("give either checkpoint or encoder, not both (a recipe with an encoder "
                     "config takes --override model.params.encoder=null next to a checkpoint)")
  enc = _encoder(checkpoint, encoder, trainable_blocks, mask_padding)
  if enc.whisper_config["num_mel_bins"] != num_channels:
    raise ValueError(f"the encoder takes {enc.whisper_config['num_mel_bins']} mel bins but the "
                     f"features have {num_channels} channels")
  feature_size = hidden_sizes[-1] if task == "kws" else ctc_hidden
  if projection_dim not in (0, feature_size):
    raise ValueError(f"a teacher's projection is its {feature_size}-wide feature layer; "
                     f"projection_dim must be 0 or {feature_size}, got {projection_dim}")
  features = keras.Input([None, num_channels], name="features")
  num_frames = keras.Input([], dtype=tf.int32, name="num_frames")
  hidden = enc(features, num_frames=num_frames)["last_hidden_state"]
  frames = whisper.output_frames(num_frames)
  outputs = {}
  if task == "kws":
    x = pooled_frames(hidden, features, num_frames, "pool", pooling, attention_units)
    for i, size in enumerate(hidden_sizes):
      feature = keras.layers.Dense(size, activation="relu", name=f"adapt_{i}")(x)
      x = keras.layers.Dropout(dropout, name=f"adapt_{i}_dropout")(feature)
    outputs["logits"] = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
  else:
    x = keras.layers.Dense(ctc_hidden, name="ctc_hidden")(hidden)
    x = keras.layers.Activation(keras.activations.gelu, name="ctc_gelu")(x)
    feature = keras.layers.LayerNormalization(name="ctc_norm")(x)
    x = keras.layers.Dropout(dropout, name="ctc_dropout")(feature)
    outputs["logits"] = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    outputs["logit_frames"] = keras.layers.Identity(name="logit_frames")(frames)
  outputs["projection"] = keras.layers.Activation("linear", dtype="float32",
                                                  name="projection")(feature)
  return keras.Model({"features": features, "num_frames": num_frames}, outputs,
                     name=f"whisper_{task}_teacher")
