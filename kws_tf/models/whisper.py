"""Whisper's audio encoder in Keras (tf-keras), and its loader for PhoWhisper checkpoints.

The encoder is the one of OpenAI Whisper as transformers implements it
(``WhisperEncoder``), at any size from tiny to large:

  log-mel ``[batch, frames, num_mel_bins]``
  -> Conv1D k3 pad 1 + GELU -> Conv1D k3 stride 2 pad 1 + GELU
     (``ceil(frames / 2)`` output frames, one every 20 ms)
  -> + sinusoidal positional embeddings (a frozen table of
     ``max_source_positions`` rows, sliced to the output length)
  -> ``encoder_layers`` pre-LayerNorm blocks: multi-head self-attention
     (q, v and out projections with biases, k without; q scaled by
     ``head_dim ** -0.5``), then a GELU MLP (fc1, fc2)
  -> a final LayerNorm.

GELU is the exact (erf) one, as in PyTorch; layer norms use epsilon 1e-5.

Conventions that differ from transformers:

* Time first: features are ``[batch, frames, num_mel_bins]`` (transformers
  takes ``[batch, num_mel_bins, frames]``).
* Any window up to ``2 * max_source_positions`` frames (3000, 30 s, for every
  Whisper): a 2 s clip may run as 200 frames instead of being padded to 30 s.
  Positions are those of the window's start, as if the clip opened a 30 s
  window. transformers' PyTorch encoder accepts exactly 3000 frames.
* Optional padding mask (``mask_padding=True`` and ``num_frames`` given): the
  valid outputs of each example of a zero-padded batch equal those of the
  example run alone without padding. Off by default, for parity with the
  checkpoint: Whisper was trained on 30 s windows and attends to the padding.

Outputs are transformers' ``last_hidden_state`` and ``hidden_states``:
``encoder_layers + 1`` tensors, the embeddings (after the positions), then the
output of every block but the last, then the last block's output after the
final LayerNorm (so the last hidden state is also the last entry).

Mixed precision: under a ``mixed_bfloat16`` (or float16) policy the
convolutions, projections and the residual stream run in the compute dtype;
layer norms (tf-keras casts to float32 itself) and the attention softmax run
in float32, and the outputs are cast to float32.

Checkpoints: ``load_encoder`` reads a local Hugging Face directory in the
layout of ``vinai/PhoWhisper-*`` (``config.json`` and ``model.safetensors`` or
``pytorch_model.bin``, or their sharded ``*.index.json`` forms) saved from
``WhisperForConditionalGeneration`` (tensors ``model.encoder.*``),
``WhisperModel`` (``encoder.*``) or a bare ``WhisperEncoder``. Decoder tensors
(``model.decoder.*``, ``decoder.*``, ``proj_out.*``) are ignored; every other
tensor must map onto exactly one Keras weight and every Keras weight must be
set, through the explicit name map of ``_weight_map``. A CTranslate2
(faster-whisper) model directory (``model.bin``) is detected by its files and
read by ``kws_tf.models.ctranslate2_whisper`` instead.
"""
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import tensorflow as tf
import tf_keras as keras

from kws_tf.models import ctranslate2_whisper

LAYER_NORM_EPSILON = 1e-5

# Sizes every config must give; the other fields default to Whisper's values.
_REQUIRED_FIELDS = ("num_mel_bins", "d_model", "encoder_layers",
                    "encoder_attention_heads", "encoder_ffn_dim",
                    "max_source_positions")
_DEFAULT_FIELDS = {"dropout": 0.0, "attention_dropout": 0.0,
                   "activation_dropout": 0.0, "activation_function": "gelu",
                   "init_std": 0.02}
_DECODER_PREFIXES = ("model.decoder.", "decoder.", "proj_out.")
_ENCODER_PREFIXES = ("model.encoder.", "encoder.")
_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_TORCH_BINS = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# A checkpoint directory, a transformers WhisperConfig or a config dict.
ConfigSource = Any


def encoder_config(source: ConfigSource) -> Dict[str, Any]:
  """The encoder fields of a Whisper config, as a plain dict.

  Args:
    source: a checkpoint directory (its ``config.json`` is read), a
      transformers ``WhisperConfig`` (anything with ``to_dict()``) or a dict
      such as ``WhisperConfig.to_dict()`` or a previous result.

  Returns:
    ``{"num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads",
    "encoder_ffn_dim", "max_source_positions", "dropout", "attention_dropout",
    "activation_dropout", "activation_function", "init_std"}``; sizes are
    required, the rest default to Whisper's values (no dropout, "gelu",
    init_std 0.02).

  Raises:
    FileNotFoundError: a directory without ``config.json``, or a path that is
      not a directory.
    ValueError: a config that is not Whisper's, lacks a size, or gives sizes
      this encoder cannot take.
  """
  if isinstance(source, (str, os.PathLike)):
    if ctranslate2_whisper.is_ctranslate2_dir(source):
      source = ctranslate2_whisper.ctranslate2_config(source)
    else:
      source = _read_config_json(os.fspath(source))
  elif hasattr(source, "to_dict"):
    source = source.to_dict()
  missing = [name for name in _REQUIRED_FIELDS if name not in source]
  if missing:
    raise ValueError(f"the Whisper config lacks {', '.join(missing)}")
  config = {name: int(source[name]) for name in _REQUIRED_FIELDS}
  for name, default in _DEFAULT_FIELDS.items():
    config[name] = type(default)(source.get(name, default))
  if config["activation_function"] != "gelu":
    raise ValueError(f"activation_function {config['activation_function']!r} "
                     "is not supported; Whisper uses 'gelu'")
  if config["d_model"] % config["encoder_attention_heads"]:
    raise ValueError(f"d_model {config['d_model']} is not a multiple of "
                     f"encoder_attention_heads {config['encoder_attention_heads']}")
  if config["d_model"] % 2:
    raise ValueError(f"d_model {config['d_model']} must be even (sinusoids)")
  return config


def _read_config_json(directory: str) -> Dict[str, Any]:
  """The dict of ``directory/config.json``; checks that it describes Whisper."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist "
                            "or is not a directory")
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config.json in checkpoint directory {directory}")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  if config.get("model_type") != "whisper":
    raise ValueError(f"{path} has model_type {config.get('model_type')!r}, "
                     "not 'whisper'")
  return config


def sinusoids(length: int, channels: int,
              max_timescale: float = 10000.0) -> np.ndarray:
  """float32 ``[length, channels]``: Whisper's positional embeddings.

  Row ``t`` is ``[sin(t * w_0), .., sin(t * w_{c/2-1}), cos(t * w_0), ..]``
  with ``w_i = max_timescale ** (-i / (c/2 - 1))``. Computed in float64, so it
  may differ from PyTorch's float32 table by about 1e-4 at late positions.
  """
  log_increment = math.log(max_timescale) / (channels // 2 - 1)
  inv_timescales = np.exp(-log_increment * np.arange(channels // 2))
  angles = np.arange(length)[:, np.newaxis] * inv_timescales[np.newaxis, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


# Input frames per encoder output frame (the stride of conv2).
TIME_STRIDE = 2


def output_frames(num_frames):
  """Encoder output frames for ``num_frames`` input frames: ``ceil(n / TIME_STRIDE)``.

  ``num_frames`` is an int or an int tensor (gives the same type).
  """
  return (num_frames + TIME_STRIDE - 1) // TIME_STRIDE


def _build(layer: keras.layers.Layer, input_shape) -> None:
  """Builds ``layer`` under its own name scope, as its first call would."""
  with tf.name_scope(layer.name):
    layer.build(input_shape)


def _kernel_init(std: float) -> keras.initializers.Initializer:
  """Whisper's kernel initialisation, normal with ``std``.

  A fresh instance per layer: a tf-keras initializer instance gives the same
  values at every call.
  """
  return keras.initializers.RandomNormal(stddev=std)


def _gelu(x: tf.Tensor) -> tf.Tensor:
  """Exact (erf) GELU, as ``torch.nn.functional.gelu``."""
  return tf.nn.gelu(x, approximate=False)


class WhisperAttention(keras.layers.Layer):
  """Whisper's multi-head self-attention: ``[batch, time, d_model]`` in and out.

  q, v and out projections have biases, k has none; queries are scaled by
  ``head_dim ** -0.5`` after their projection. Scores and softmax run in
  float32.
  """

  def __init__(self, d_model: int, num_heads: int, dropout: float,
               init_std: float, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads

    def dense(name, use_bias=True):
      return keras.layers.Dense(d_model, use_bias=use_bias, name=name,
                                kernel_initializer=_kernel_init(init_std))

    self.q_proj = dense("q_proj")
    self.k_proj = dense("k_proj", use_bias=False)
    self.v_proj = dense("v_proj")
    self.out_proj = dense("out_proj")
    self.dropout = keras.layers.Dropout(dropout)

  def build(self, input_shape):
    for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
      _build(layer, input_shape)
    super().build(input_shape)

  def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
    """``[batch, time, d_model]`` -> ``[batch, heads, time, head_dim]``."""
    shape = tf.shape(x)
    x = tf.reshape(x, [shape[0], shape[1], self.num_heads, self.head_dim])
    return tf.transpose(x, [0, 2, 1, 3])

  def call(self, x: tf.Tensor, key_bias: Optional[tf.Tensor] = None,
           training=None) -> tf.Tensor:
    """Self-attention of ``x [batch, time, d_model]``.

    ``key_bias``: optional float32 ``[batch, 1, 1, time]`` added to the scores
    (0 for keys to attend to, a large negative number for masked keys).
    """
    query = self._split_heads(self.q_proj(x) * self.head_dim ** -0.5)
    key = self._split_heads(self.k_proj(x))
    value = self._split_heads(self.v_proj(x))
    scores = tf.cast(tf.matmul(query, key, transpose_b=True), tf.float32)
    if key_bias is not None:
      scores += key_bias
    weights = tf.cast(tf.nn.softmax(scores, axis=-1), value.dtype)
    weights = self.dropout(weights, training=training)
    context = tf.transpose(tf.matmul(weights, value), [0, 2, 1, 3])
    shape = tf.shape(x)
    return self.out_proj(tf.reshape(context, [shape[0], shape[1], -1]))


class WhisperBlock(keras.layers.Layer):
  """One pre-LayerNorm encoder block: ``[batch, time, d_model]`` in and out.

  ``x + attention(LN(x))``, then ``x + fc2(GELU(fc1(LN(x))))``, with
  residual dropout ``dropout`` and ``activation_dropout`` after the GELU.
  """

  def __init__(self, config: Mapping[str, Any], **kwargs):
    super().__init__(**kwargs)
    self.self_attn_layer_norm = keras.layers.LayerNormalization(
        epsilon=LAYER_NORM_EPSILON, name="self_attn_layer_norm")
    self.self_attn = WhisperAttention(
        config["d_model"], config["encoder_attention_heads"],
        config["attention_dropout"], config["init_std"], name="self_attn")
    self.final_layer_norm = keras.layers.LayerNormalization(
        epsilon=LAYER_NORM_EPSILON, name="final_layer_norm")
    self.fc1 = keras.layers.Dense(config["encoder_ffn_dim"], name="fc1",
                                  kernel_initializer=_kernel_init(config["init_std"]))
    self.fc2 = keras.layers.Dense(config["d_model"], name="fc2",
                                  kernel_initializer=_kernel_init(config["init_std"]))
    self.dropout = keras.layers.Dropout(config["dropout"])
    self.activation_dropout = keras.layers.Dropout(config["activation_dropout"])

  def build(self, input_shape):
    ffn_shape = tuple(input_shape[:-1]) + (self.fc1.units,)
    for layer, shape in ((self.self_attn_layer_norm, input_shape),
                         (self.self_attn, input_shape),
                         (self.final_layer_norm, input_shape),
                         (self.fc1, input_shape), (self.fc2, ffn_shape)):
      _build(layer, shape)
    super().build(input_shape)

  def call(self, x: tf.Tensor, key_bias: Optional[tf.Tensor] = None,
           training=None) -> tf.Tensor:
    """``x [batch, time, d_model]``; ``key_bias`` as in ``WhisperAttention``."""
    attended = self.self_attn(self.self_attn_layer_norm(x), key_bias=key_bias,
                              training=training)
    x = x + self.dropout(attended, training=training)
    hidden = self.activation_dropout(_gelu(self.fc1(self.final_layer_norm(x))),
                                     training=training)
    return x + self.dropout(self.fc2(hidden), training=training)


class WhisperEncoder(keras.layers.Layer):
  """Whisper's audio encoder as a Keras layer (see the module docstring).

  Args:
    config: a transformers ``WhisperConfig``, its dict, a checkpoint directory
      or an ``encoder_config`` result.
    mask_padding: when True and ``num_frames`` is given to ``call``, frames
      past each example's length are masked (see ``call``).

  Call: ``encoder(features, num_frames=None, training=None)`` with
    ``features`` float ``[batch, frames, num_mel_bins]`` (log-mel, 10 ms
    frames, ``frames <= 2 * max_source_positions``) and ``num_frames``
    optional int32 ``[batch]``. Returns a dict of float32 tensors:
    ``last_hidden_state`` ``[batch, ceil(frames / 2), d_model]`` and
    ``hidden_states``, a list of ``encoder_layers + 1`` tensors of that shape
    (transformers' order; the last is ``last_hidden_state``).

  Sub-layers, named as transformers' modules: ``conv1``, ``conv2``, the
  non-trainable weight ``embed_positions`` ``[max_source_positions,
  d_model]``, ``blocks`` (a list; transformers' ``layers``) and
  ``layer_norm``. Weights are created by ``build`` with Whisper's
  initialisation (normal kernels of std ``init_std``, zero biases, sinusoidal
  positions); ``load_encoder`` overwrites them from a checkpoint.
  """

  def __init__(self, config: ConfigSource, mask_padding: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self.whisper_config = encoder_config(config)
    self.mask_padding = bool(mask_padding)
    config = self.whisper_config
    self.conv1 = keras.layers.Conv1D(
        config["d_model"], 3, name="conv1",
        kernel_initializer=_kernel_init(config["init_std"]))
    self.conv2 = keras.layers.Conv1D(
        config["d_model"], 3, strides=TIME_STRIDE, name="conv2",
        kernel_initializer=_kernel_init(config["init_std"]))
    self.embedding_dropout = keras.layers.Dropout(config["dropout"])
    self.blocks = [WhisperBlock(config, name=f"layers_{i}")
                   for i in range(config["encoder_layers"])]
    self.layer_norm = keras.layers.LayerNormalization(
        epsilon=LAYER_NORM_EPSILON, name="layer_norm")

  @property
  def max_frames(self) -> int:
    """Longest input window in frames: ``2 * max_source_positions``."""
    return 2 * self.whisper_config["max_source_positions"]

  def build(self, input_shape):
    config = self.whisper_config
    hidden_shape = (None, None, config["d_model"])
    _build(self.conv1, (None, None, config["num_mel_bins"]))
    _build(self.conv2, hidden_shape)
    self.embed_positions = self.add_weight(
        "embed_positions",
        shape=(config["max_source_positions"], config["d_model"]),
        initializer=keras.initializers.Constant(
            sinusoids(config["max_source_positions"], config["d_model"])),
        trainable=False)
    for layer in self.blocks + [self.layer_norm]:
      _build(layer, hidden_shape)
    super().build(input_shape)

  def call(self, features: tf.Tensor, num_frames: Optional[tf.Tensor] = None,
           training=None) -> Dict[str, Any]:
    """Encodes ``features [batch, frames, num_mel_bins]``.

    With ``mask_padding`` and ``num_frames`` (int32 ``[batch]``), input frames
    past ``num_frames`` and the first convolution's outputs there are zeroed
    (so the stride-2 convolution sees the zero padding an unpadded example
    sees) and attention ignores keys past ``output_frames(num_frames)``.
    Outputs past an example's valid frames are then meaningless.
    """
    frames = features.shape[1]
    if frames is not None and frames > self.max_frames:
      raise ValueError(f"{frames} input frames; the Whisper encoder takes at "
                       f"most {self.max_frames} (2 * max_source_positions)")
    tf.debugging.assert_less_equal(
        tf.shape(features)[1], self.max_frames,
        message=f"the Whisper encoder takes at most {self.max_frames} frames")
    frame_mask = key_bias = None
    if self.mask_padding and num_frames is not None:
      num_frames = tf.cast(num_frames, tf.int32)
      frame_mask = tf.sequence_mask(num_frames, tf.shape(features)[1],
                                    dtype=features.dtype)[:, :, tf.newaxis]
      features *= frame_mask
    time_padding = [[0, 0], [1, 1], [0, 0]]
    x = _gelu(self.conv1(tf.pad(features, time_padding)))
    if frame_mask is not None:
      x *= tf.cast(frame_mask, x.dtype)
    x = _gelu(self.conv2(tf.pad(x, time_padding)))
    length = tf.shape(x)[1]
    x += tf.cast(self.embed_positions[:length], x.dtype)
    x = self.embedding_dropout(x, training=training)
    if frame_mask is not None:
      valid = tf.sequence_mask(output_frames(num_frames), length, dtype=tf.float32)
      key_bias = ((1.0 - valid) * -1e9)[:, tf.newaxis, tf.newaxis, :]
    hidden_states = [x]
    for block in self.blocks:
      x = block(x, key_bias=key_bias, training=training)
      hidden_states.append(x)
    hidden_states[-1] = self.layer_norm(x)
    hidden_states = [tf.cast(h, tf.float32) for h in hidden_states]
    return {"last_hidden_state": hidden_states[-1],
            "hidden_states": hidden_states}

  def get_config(self) -> Dict[str, Any]:
    return {**super().get_config(), "config": dict(self.whisper_config),
            "mask_padding": self.mask_padding}


def set_trainable_blocks(encoder: WhisperEncoder, top_k: Optional[int]) -> None:
  """Chooses which parts of ``encoder`` train.

  Args:
    encoder: a ``WhisperEncoder``.
    top_k: ``None`` or ``-1``: everything trains (convolutions, every block,
      the final layer norm), e.g. from scratch; ``0``: the encoder is frozen;
      ``k > 0``: the top ``k`` blocks and the final layer norm train, the
      convolutions and lower blocks are frozen. The positional embeddings
      never train (as in Whisper).

  A model that contains the encoder must be compiled again afterwards for
  ``fit`` to see the change.
  """
  num_blocks = len(encoder.blocks)
  if top_k is None or top_k == -1:
    top_k = num_blocks
    train_convolutions = True
  elif 0 <= top_k <= num_blocks:
    train_convolutions = False
  else:
    raise ValueError(f"top_k {top_k} is not None, -1 or in [0, {num_blocks}]")
  encoder.trainable = top_k > 0  # also sets every sub-layer
  encoder.conv1.trainable = encoder.conv2.trainable = train_convolutions
  for i, block in enumerate(encoder.blocks):
    block.trainable = i >= num_blocks - top_k
  encoder.layer_norm.trainable = top_k > 0


def random_encoder(config: ConfigSource, mask_padding: bool = False,
                   **kwargs) -> WhisperEncoder:
  """A built ``WhisperEncoder`` with Whisper's random initialisation.

  For training from scratch; seed with ``keras.utils.set_random_seed`` first
  for reproducible weights. ``kwargs`` go to the layer (e.g. ``name``).
  """
  encoder = WhisperEncoder(config, mask_padding=mask_padding, **kwargs)
  _build(encoder, (None, None, encoder.whisper_config["num_mel_bins"]))
  return encoder


def load_encoder(checkpoint_dir: Union[str, os.PathLike],
                 mask_padding: bool = False, **kwargs) -> WhisperEncoder:
  """The encoder of a local Hugging Face Whisper checkpoint, weights set.

  Args:
    checkpoint_dir: a directory with ``config.json`` and ``model.safetensors``
      (float32, float16 or bfloat16, read with numpy, no torch) or
      ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``), or
      their sharded ``*.index.json`` forms; safetensors are preferred when
      both exist. Or a CTranslate2
      Whisper directory (``model.bin``), read by ``load_ctranslate2_encoder``.
    mask_padding: see ``WhisperEncoder``.
    kwargs: go to the layer (e.g. ``name``).

  Raises:
    FileNotFoundError: the directory, its config or its weights are missing.
    ValueError: a checkpoint tensor maps to no Keras weight, a Keras weight
      has no tensor, or shapes differ (the message names the tensors).
    ImportError: the checkpoint is ``pytorch_model.bin`` and torch is absent.
  """
  checkpoint_dir = os.fspath(checkpoint_dir)
  if ctranslate2_whisper.is_ctranslate2_dir(checkpoint_dir):
    return load_ctranslate2_encoder(checkpoint_dir, mask_padding=mask_padding, **kwargs)
  encoder = random_encoder(checkpoint_dir, mask_padding=mask_padding, **kwargs)
  _set_weights(encoder, _read_tensors(checkpoint_dir))
  return encoder


def load_ctranslate2_encoder(model_dir: Union[str, os.PathLike], mask_padding: bool = False,
                             **kwargs) -> WhisperEncoder:
  """The encoder of a CTranslate2 Whisper directory, weights set.

  Args:
    model_dir: a directory with a CTranslate2 ``model.bin`` of spec
      ``WhisperSpec`` (e.g. a faster-whisper model, or
      ``kws-get-whisper-base``'s output).
    mask_padding: see ``WhisperEncoder``.
    kwargs: go to the layer (e.g. ``name``).

  Raises:
    FileNotFoundError: no ``model.bin``.
    CTranslate2FormatError (a ValueError): see
      ``ctranslate2_whisper.read_model_bin`` and ``encoder_tensors``.
  """
  model = ctranslate2_whisper.read_model_bin(model_dir)
  config = ctranslate2_whisper.config_from_model(model)
  encoder = random_encoder(config, mask_padding=mask_padding, **kwargs)
  _set_weights(encoder, ctranslate2_whisper.encoder_tensors(model, config))
  return encoder


def _weight_map(encoder: WhisperEncoder) -> List[Tuple[str, tf.Variable, bool]]:
  """``(checkpoint name, Keras weight, transposed)`` per weight.

  Names are those of transformers' ``WhisperEncoder``; a checkpoint prefixes
  them with ``model.encoder.`` or ``encoder.`` (``_set_weights`` finds which).

  ``transposed``: the checkpoint holds the weight with its axes reversed
  (torch Linear ``[out, in]`` vs Keras Dense ``[in, out]``; torch Conv1d
  ``[out, in, k]`` vs Keras Conv1D ``[k, in, out]``).
  """
  entries = [("conv1.weight", encoder.conv1.kernel, True),
             ("conv1.bias", encoder.conv1.bias, False),
             ("conv2.weight", encoder.conv2.kernel, True),
             ("conv2.bias", encoder.conv2.bias, False),
             ("embed_positions.weight", encoder.embed_positions, False)]
  for i, block in enumerate(encoder.blocks):
    prefix = f"layers.{i}."
    attention = block.self_attn
    entries += [
        (prefix + "self_attn.q_proj.weight", attention.q_proj.kernel, True),
        (prefix + "self_attn.q_proj.bias", attention.q_proj.bias, False),
        (prefix + "self_attn.k_proj.weight", attention.k_proj.kernel, True),
        (prefix + "self_attn.v_proj.weight", attention.v_proj.kernel, True),
        (prefix + "self_attn.v_proj.bias", attention.v_proj.bias, False),
        (prefix + "self_attn.out_proj.weight", attention.out_proj.kernel, True),
        (prefix + "self_attn.out_proj.bias", attention.out_proj.bias, False),
        (prefix + "self_attn_layer_norm.weight", block.self_attn_layer_norm.gamma, False),
        (prefix + "self_attn_layer_norm.bias", block.self_attn_layer_norm.beta, False),
        (prefix + "fc1.weight", block.fc1.kernel, True),
        (prefix + "fc1.bias", block.fc1.bias, False),
        (prefix + "fc2.weight", block.fc2.kernel, True),
        (prefix + "fc2.bias", block.fc2.bias, False),
        (prefix + "final_layer_norm.weight", block.final_layer_norm.gamma, False),
        (prefix + "final_layer_norm.bias", block.final_layer_norm.beta, False)]
  entries += [("layer_norm.weight", encoder.layer_norm.gamma, False),
              ("layer_norm.bias", encoder.layer_norm.beta, False)]
  return entries


def _set_weights(encoder: WhisperEncoder,
                 tensors: Mapping[str, np.ndarray]) -> None:
  """Assigns checkpoint ``tensors`` (decoder tensors removed) to ``encoder``."""
  prefix = next((p for p in _ENCODER_PREFIXES
                 if any(name.startswith(p) for name in tensors)), "")
  entries = [(prefix + name, variable, transposed)
             for name, variable, transposed in _weight_map(encoder)]
  mapped = {id(variable) for _, variable, _ in entries}
  unmapped = [w.name for w in encoder.weights if id(w) not in mapped]
  if unmapped:
    raise RuntimeError(f"the name map misses Keras weights {unmapped}")
  names = {name for name, _, _ in entries}
  missing = sorted(names - set(tensors))
  unexpected = sorted(set(tensors) - names)
  if missing or unexpected:
    raise ValueError(
        "the checkpoint does not match the encoder of its config.json: "
        f"missing tensors {missing or 'none'}; unexpected tensors "
        f"{unexpected or 'none'}")
  for name, variable, transposed in entries:
    expected = tuple(variable.shape)[::-1] if transposed else tuple(variable.shape)
    value = tensors[name]
    if value.shape != expected:
      raise ValueError(f"tensor {name} has shape {value.shape}; the encoder of "
                       f"config.json expects {expected} (Keras weight "
                       f"{variable.name})")
    if transposed:
      value = np.transpose(value)
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))


def _read_tensors(directory: str) -> Dict[str, np.ndarray]:
  """``{checkpoint name: array}`` of every tensor but the decoder's."""
  for names, reader in ((_SAFETENSORS, _read_safetensors),
                        (_TORCH_BINS, _read_torch_bin)):
    for name in names:
      path = os.path.join(directory, name)
      if os.path.isfile(path):
        return reader(_shard_files(path))
  raise FileNotFoundError(f"no weights in checkpoint directory {directory}: "
                          f"expected one of {', '.join(_SAFETENSORS + _TORCH_BINS)}")


def _shard_files(path: str) -> List[str]:
  """The weight files of ``path``: itself, or the shards its index lists."""
  if not path.endswith(".index.json"):
    return [path]
  with open(path, encoding="utf-8") as f:
    shards = sorted(set(json.load(f)["weight_map"].values()))
  return [os.path.join(os.path.dirname(path), shard) for shard in shards]


def _read_safetensors(files: List[str]) -> Dict[str, np.ndarray]:
  """Non-decoder tensors of safetensors files, read with numpy (no torch).

  Tensors come back as float32 whatever their stored type: float32, float16
  or bfloat16 (PhoWhisper's large checkpoints ship in half precision), as
  ``_read_torch_bin`` gives them. numpy has no bfloat16: ``ml_dtypes`` (a
  dependency of TensorFlow) defines it and registers it with numpy, which
  safetensors' numpy reader needs for a ``BF16`` tensor.
  """
  import ml_dtypes  # noqa: F401  (registers numpy's bfloat16)
  from safetensors import safe_open

  tensors = {}
  for path in files:
    with safe_open(path, framework="numpy") as f:
      for name in f.keys():
        if not name.startswith(_DECODER_PREFIXES):
          tensors[name] = f.get_tensor(name).astype(np.float32)
  return tensors


def _read_torch_bin(files: List[str]) -> Dict[str, np.ndarray]:
  """Non-decoder tensors of ``pytorch_model.bin`` files.

  Read with ``torch.load(weights_only=True)``, which unpickles tensors only,
  never arbitrary objects.
  """
  try:
    import torch
  except ImportError as error:
    raise ImportError(f"{files[0]} is a PyTorch checkpoint: reading it needs "
                      "torch (pip install torch), or convert it to "
                      "model.safetensors") from error
  tensors = {}
  for path in files:
    state = torch.load(path, weights_only=True, map_location="cpu")
    for name, value in state.items():
      if not name.startswith(_DECODER_PREFIXES):
        tensors[name] = value.to(torch.float32).numpy()
  return tensors
