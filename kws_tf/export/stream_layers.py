"""Streaming a kws student layer by layer: each call computes only the new frames.

``kws_tf.export.streaming`` runs a student's whole network on the window every
call, because a window's frames near its edges differ from the same frames of
the continuing stream (zero padding, window-wide clamps). A student without
any window-wide operation streams layer by layer instead:

* the front end ``features.MfccConfig`` with ``center=False, top_db=None,
  delta_width=0``: frame ``t`` reads samples ``[t * frame_step, t * frame_step
  + fft_length)`` alone;
* a body of time convolutions without padding (wav2letter ``padding="valid"``:
  ``Conv2D`` with kernel ``(k, 1)``, stride ``(s, 1)``, "valid") and per-frame
  layers (batch norm, activation, the GLU's product, dropout, the reshape of
  the features), ending in a pooling over the window's frames (``MaskedMean``,
  ``CentredMean`` or ``AttentivePooling``), then the classifier.

Then every frame of every layer is a function of a fixed span of past samples,
so a window's frames at each layer are frames of one sequence that continues
with the stream, and two windows share the numbers of their common frames.
Each call computes, at every layer, only the frames that its new samples
complete, from buffers of the frames before them, carried as state tensors
(the convention of ``kws_tf.export.streaming``: input ``state_<name>``, output
``next_state_<name>``):

  front end  the ``hop / frame_step`` new frames from the call's samples and
             the last samples before them (state ``samples``, ``[1, samples]``;
             none for frames without overlap, as 20 ms frames every 20 ms)
  conv       a layer of kernel ``k`` and stride ``s`` given ``n`` new input
             frames computes its ``n / s`` new output frames from them and the
             ``k - s`` input frames before them (state ``<layer>``: the last
             input frames ``[1, frames, 1, channels]``, one state for the convs
             that read the same input, as a GLU's two halves)
  per frame  on the new frames only
  pooling    the pooling of the window's last-layer frames: the new ones and the
             ones before them (state ``pool``, ``[1, frames, 1, channels]``)
  head       the classifier on the pooled vector

A window's last frame at a layer need not read its input's last frame (a
stride-2 layer over an even number of frames skips one): the buffers keep the
input frames such a layer has yet to read, so each layer's frames stay on the
window's grid. That grid is the same for every window only when a hop moves
each layer's input by whole strides: the hop's frame count must be a multiple
of the body's total time stride (a stride-2 first layer: an even number of
frames per call), and a multiple of the front end's ``frame_step`` that
divides the clip (every window starts on the frame grid).

The state starts at the values of silence (each layer's frames of a stream of
zeros), so from the first call the outputs are those of the non-streaming file
on the window with zeros before the stream's start, as the window path's are.

Only these students stream this way; any other (padded convolutions,
MobileNetV3's 2-D blocks, a front end with a
window-wide operation) streams by running its network on the whole window
(``streaming.StreamLayout``), still exact, at the cost of the whole network
every call. ``unsupported`` says why a student does not stream layer by layer.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from kws_tf import features
from kws_tf.export import serving
from kws_tf.models import heads

# Layers that compute each frame from that frame alone (the reshape: when it keeps
# the frames, ``_check_reshape``).
_PER_FRAME = (keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.Dropout,
              keras.layers.Multiply, keras.layers.Dense, keras.layers.Reshape)
# Poolings over a layer's valid frames; a full window's frames are all valid.
_POOLINGS = (heads.MaskedMean, heads.CentredMean, heads.AttentivePooling)
SAMPLES = "samples"
POOL = "pool"


def check_hop(front_end, clip_samples: int, hop_samples: int) -> None:
  """ValueError unless the hop is a multiple of the front end's ``frame_step``
  that divides the clip (every window starts on the frame grid)."""
  step = front_end.frame_step
  if hop_samples <= 0 or hop_samples % step or clip_samples % hop_samples:
    raise ValueError(f"the stream's hop must be a multiple of the front end's frame step "
                     f"({step} samples) that divides the clip ({clip_samples} samples); got "
                     f"{hop_samples} samples")


class _Unsupported(Exception):
  """Why a student does not stream layer by layer."""


@dataclasses.dataclass
class _Op:
  """One layer of the walk: ``kind`` "frame", "conv" or "pool"; its Keras layer;
  the ids of the Keras tensors it reads (``inputs``) and gives (``output``)."""
  kind: str
  layer: keras.layers.Layer
  inputs: List[int]
  output: int


def _check_front_end(front_end) -> None:
  if not isinstance(front_end, features.MfccConfig):
    raise _Unsupported(f"its front end is {front_end.format!r}, not mfcc")
  window_wide = [name for name, value in (("center", front_end.center),
                                          ("top_db", front_end.top_db),
                                          ("delta_width", front_end.delta_width)) if value]
  if window_wide:
    raise _Unsupported("its MFCC front end has window-wide operations ("
                       + ", ".join(f"{name}={getattr(front_end, name)!r}"
                                   for name in window_wide)
                       + "; center=False, top_db=None, delta_width=0 have none)")


def _check_conv(layer: keras.layers.Conv2D) -> None:
  if (layer.padding != "valid" or layer.kernel_size[1] != 1 or layer.strides[1] != 1
      or tuple(layer.dilation_rate) != (1, 1)):
    raise _Unsupported(f"its layer {layer.name!r} is not a time convolution without padding "
                       f"(padding {layer.padding!r}, kernel {layer.kernel_size}, strides "
                       f"{layer.strides})")


def _check_reshape(layer: keras.layers.Reshape) -> None:
  target, source = layer.target_shape, layer.input.shape
  if target[0] != -1 or len(source) != 3 or int(np.prod(target[1:])) != source[-1]:
    raise _Unsupported(f"its layer {layer.name!r} reshapes across frames")


def _walk(model: keras.Model) -> List[_Op]:
  """The model's layers from its ``features`` input to its ``logits``, in
  order, as ``_Op``s; ``_Unsupported`` at the first layer that mixes frames
  otherwise than a time convolution without padding or a pooling of frames."""
  frames = {id(model.input["features"])}  # tensors of one vector per frame
  masks = set()
  ops = []
  for layer in model.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue
    if isinstance(layer, heads.FrameMask):
      masks.add(id(layer.output))
      continue
    inputs = [id(t) for t in tf.nest.flatten(layer.input)]
    if isinstance(layer, _POOLINGS):
      if len(inputs) != 2 or inputs[0] not in frames or inputs[1] not in masks:
        raise _Unsupported(f"its pooling {layer.name!r} does not pool a layer's frames")
      ops.append(_Op("pool", layer, inputs[:1], id(layer.output)))
      frames.add(id(layer.output))
      continue
    if type(layer) is keras.layers.Conv2D:  # pylint: disable=unidiomatic-typecheck
      _check_conv(layer)
      kind = "conv"
    elif isinstance(layer, _PER_FRAME):
      if isinstance(layer, keras.layers.Reshape):
        _check_reshape(layer)
      kind = "frame"
    else:
      raise _Unsupported(f"its layer {layer.name!r} ({type(layer).__name__}) mixes frames")
    if any(i not in frames for i in inputs):
      raise _Unsupported(f"its layer {layer.name!r} reads a frame mask or another input")
    ops.append(_Op(kind, layer, inputs, id(layer.output)))
    frames.add(id(layer.output))
  if id(model.output["logits"]) not in frames or not any(op.kind == "pool" for op in ops):
    raise _Unsupported("its logits do not come from a pooling over frames")
  return ops


def _time_stride(model: keras.Model, ops: List[_Op]) -> int:
  """Input frames per frame of the pooled layer: the product of the strides of
  the convs on the way (``_walk``'s ``ops``)."""
  strides = {id(model.input["features"]): 1}
  for op in ops:
    stride = op.layer.strides[0] if op.kind == "conv" else 1
    strides[op.output] = strides[op.inputs[0]] * stride
    if op.kind == "pool":
      return strides[op.inputs[0]]
  raise _Unsupported("it has no pooling")


def unsupported(model: keras.Model, front_end) -> Optional[str]:
  """Why ``model`` with ``front_end`` does not stream layer by layer (module
  docstring), or None when it does."""
  try:
    _check_front_end(front_end)
    _walk(model)
  except _Unsupported as e:
    return str(e)
  return None


@dataclasses.dataclass(frozen=True)
class _Conv:
  """How a conv runs in a call: its input (the buffer's frames, then the new
  ones, ``T`` in all) is cut to ``[T - skip - read, T - skip)``."""
  read: int
  skip: int


class LayerPlan:
  """The state and per-call frames of a student streamed layer by layer.

  Args:
    model: a kws student for which ``unsupported`` is None.
    front_end: its ``features.MfccConfig`` (as exported).
    clip_samples: samples of a window. hop_samples: samples per call.

  ValueError for a hop that does not fit (module docstring) or a window too
  short for the model's receptive field.
  """

  def __init__(self, model: keras.Model, front_end: features.MfccConfig, clip_samples: int,
               hop_samples: int):
    _check_front_end(front_end)
    self.front_end = front_end
    self.clip_samples, self.hop_samples = clip_samples, hop_samples
    check_hop(front_end, clip_samples, hop_samples)
    step, hop, clip = front_end.frame_step, hop_samples, clip_samples
    window_frames = front_end.num_frames(clip)
    if window_frames < 1:
      raise ValueError(f"a clip of {clip} samples holds no frame of {front_end.fft_length}")
    self.hop_frames = hop // step
    # A call's new frames read its last ``read_samples`` samples but the last
    # ``end_skip`` (where the window's last frame ends), the hop and the
    # ``buffer_samples`` before it.
    self.end_skip = (clip - front_end.fft_length) % step
    self.read_samples = (self.hop_frames - 1) * step + front_end.fft_length
    self.buffer_samples = max(0, self.read_samples + self.end_skip - hop)
    self._ops = _walk(model)
    self.time_stride = _time_stride(model, self._ops)
    if self.hop_frames % self.time_stride:
      raise ValueError(f"the stream's hop of {self.hop_frames} frames is not a multiple of the "
                       f"model's total time stride {self.time_stride} (each layer computes "
                       "whole frames of its own every call)")
    # Per tensor id: frames of a window, new frames per call.
    sizes = {id(model.input["features"]): (window_frames, self.hop_frames)}
    self._buffers: Dict[int, Tuple[str, int]] = {}
    self._convs: Dict[str, _Conv] = {}
    shapes = {SAMPLES: (1, self.buffer_samples)}
    for op in self._ops:
      window, new = sizes[op.inputs[0]]
      layer = op.layer
      if op.kind == "pool":
        self.pool_frames = window
        shapes[POOL] = (1, max(0, window - new)) + tuple(layer.input[0].shape[2:])
        sizes[op.output] = (1, 1)
      elif op.kind == "frame":
        sizes[op.output] = (window, new)
      else:
        kernel, stride = layer.kernel_size[0], layer.strides[0]
        outputs = (window - kernel) // stride + 1
        if outputs < 1:
          raise ValueError(f"a window of {window_frames} frames leaves layer {layer.name!r} "
                           "no frame: the model's receptive field is longer than the window")
        skip = (window - kernel) % stride
        read = (new // stride - 1) * stride + kernel
        self._convs[layer.name] = _Conv(read, skip)
        name, frames = self._buffers.get(op.inputs[0], (layer.name, 0))
        self._buffers[op.inputs[0]] = (name, max(frames, read + skip - new))
        shapes[name] = (1, self._buffers[op.inputs[0]][1]) + tuple(layer.input.shape[2:])
        sizes[op.output] = (outputs, new // stride)
    self._shapes = {name: shape for name, shape in shapes.items() if np.prod(shape) > 0}

  @property
  def calls_per_window(self) -> int:
    return self.clip_samples // self.hop_samples

  def state_shapes(self) -> Dict[str, Tuple[int, ...]]:
    """State name -> shape (batch 1), the states of size 0 left out."""
    return dict(self._shapes)

  def run(self, model: keras.Model, waveform: tf.Tensor, state: Dict[str, tf.Tensor],
          normalization: Optional[Tuple[np.ndarray, np.ndarray]]
          ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """One call: ``(logits [1, classes], next state by name)`` of the new
    samples ``waveform [1, hop_samples]`` and the ``state`` by name;
    ``normalization``: the features' ``(mean, 1 / std)`` per channel, or None."""
    front_end, outputs = self.front_end, {}
    with tf.name_scope(serving.FRONT_END_SCOPE):
      samples = waveform
      if SAMPLES in state:
        samples = tf.concat([state[SAMPLES], waveform], 1)
        outputs[SAMPLES] = samples[:, -self.buffer_samples:]
      end = samples.shape[1] - self.end_skip
      power = features.power_spectrogram(
          _frames(samples, end - self.read_samples, end), None, front_end.analysis_window(),
          front_end.frame_step, center=False, dft=front_end.dft,
          num_bins=front_end.mel_matrix().shape[1])
      # The MFCCs standardised, (db @ dct - mean) / std, as one matrix product
      # and bias (this front end has no clamp and no deltas: ``cepstra`` is
      # the DCT alone).
      matrix, bias = front_end.dct_matrix(), np.zeros(front_end.num_mfcc, np.float32)
      if normalization is not None:
        mean, inverse_std = normalization
        matrix, bias = matrix * inverse_std, -mean * inverse_std
      values = tf.tensordot(front_end.log_mel(power), matrix, 1) + bias
    tensors = {id(model.input["features"]): values}
    extended = {}  # tensor id -> the buffer's frames, then the new ones
    with tf.name_scope(model.name):
      for op in self._ops:
        layer = op.layer
        if op.kind == "frame":
          inputs = [tensors[i] for i in op.inputs]
          tensors[op.output] = layer(inputs if len(inputs) > 1 else inputs[0], training=False)
        elif op.kind == "conv":
          source = op.inputs[0]
          if source not in extended:
            extended[source] = self._extend(tensors[source], self._buffers[source][0], state,
                                            outputs)
          x, conv = extended[source], self._convs[layer.name]
          end = x.shape[1] - conv.skip
          tensors[op.output] = layer(_frames(x, end - conv.read, end), training=False)
        else:
          x = self._extend(tensors[op.inputs[0]], POOL, state, outputs)
          x = _frames(x, x.shape[1] - self.pool_frames, x.shape[1])
          if isinstance(layer, heads.MaskedMean):
            pooled = tf.cast(tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2],
                                            keepdims=layer.keepdims), layer.compute_dtype)
          else:  # weights over the window's frames, all of them valid
            pooled = layer([x, tf.ones([1, self.pool_frames, 1, 1], x.dtype)], training=False)
          tensors[op.output] = pooled
    return tensors[id(model.output["logits"])], outputs

  def _extend(self, new: tf.Tensor, name: str, state: Dict[str, tf.Tensor],
              outputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """``new`` frames after the state ``name``'s (if it has any), whose last
    frames become ``outputs[name]``."""
    if name not in state:
      return new
    x = tf.concat([state[name], new], 1)
    outputs[name] = x[:, -state[name].shape[1]:]
    return x


def _frames(x: tf.Tensor, start: int, end: int) -> tf.Tensor:
  """``x[:, start:end]``, and ``x`` itself when that is all of it (no slice op
  in the file)."""
  if start == 0 and end == x.shape[1]:
    return x
  return x[:, start:end]
