"""Streaming TFLite files of kws students: audio in hops, posteriors every hop.

A streaming file takes ``hop_samples`` new samples per call, keeps what it
needs of the past in explicit state tensors (inputs ``state_<name>``, the
updated values as outputs ``next_state_<name>``, which the caller feeds back
at the next call) and gives the keyword posteriors of the window of the last
``clip_samples`` samples, every call.

Two ways, chosen by the student (``stream_layout``): a student without any
window-wide operation (``kws_tf.export.stream_layers``: a wav2letter with
``padding="valid"`` on the MFCC front end with ``center=False, top_db=None,
delta_width=0``) streams layer by layer, each call computing only the new
frames of every layer, with a state per layer (see there). Any other student
(padded convolutions, MobileNetV3's 2-D blocks, the librosa MFCC front end)
streams its window: the front end's log-mel carried over, the network run on
the whole window every call, with this state:

  inputs   waveform               float32 ``[1, hop_samples]``, the new samples
           state_samples          float32 ``[1, buffer]``: the last samples
           state_log_mel          float32 ``[1, ring, mels]``: log-mel (dB, not yet
                                  clamped) of the window's past frames
           state_left_edges       float32 ``[1, queue, left, mels]``: the log-mel
                                  of the reflect-padded first frames of the
                                  windows of the next ``queue`` calls
  outputs  logits, probabilities  float32 ``[1, classes]``
           next_state_<name>      the state for the next call

(a state of size 0 for a front end is left out). Semantics, both ways: after
call ``c`` (1-based) the outputs are exactly those of the non-streaming file
(``model_<format>``, ``kws_tf.export.serving``) on samples ``[c * hop - clip,
c * hop)`` of the stream, with zeros before the stream's start, when every
state starts at its ``initial`` value (the values of silence: here samples 0,
log-mel -100 dB; layer by layer each layer's frames of zeros). From call
``clip_samples / hop_samples`` on (the first full window) every state has
been overwritten with values of the stream, so those outputs
are exact whatever the initial state. An output is due once a hop has
arrived: the delay is the hop, plus the compute time.

Why the window's network runs every call on that path. The students'
convolutions pad with zeros at the window's edges ("same" padding at each layer, see
``kws_tf.models.heads``) and the MFCC front end clamps each window at its own
maximum (``top_db``), replicates its edge frames for the deltas and reflects
its samples at both ends (``center``). A layer's frame near the window's edges
therefore differs from the same frame computed over the continuing stream,
and for the pipeline's students every frame of the last layers is such a
frame (e.g. configs/kws_small.yaml: the receptive field of a pooled frame is
59 input frames, the window 51). Equality with the non-streaming model leaves
no layer to carry from one window to the next; what carries over exactly is
the front end up to the log-mel of each frame: each call computes the
log-mel of the ``hop / frame_step`` new frames, of the frames the reflect
padding makes at the window's end and of those at the start of the window
``queue`` calls ahead, and keeps the rest in the state; then the clamp, DCT,
deltas, normalisation and the network run on the window's ``frames``
log-mel frames, the same ops as the non-streaming file.

Hops: a multiple of the front end's ``frame_step`` that divides
``clip_samples`` (so every window starts on the frame grid and the left-edge
frames computed ahead meet their window), at most the window's frames without
reflected samples (layer by layer: a multiple of the model's total time stride
in frames instead). The front end must be "mfcc" (the kws students').

Formats: ``stream_float32`` (plain conversion) and ``stream_int8`` (the
network int8, calibrated on the calibration clips (``calibration_calls``), the
front end, its state and the normalisation float32, float32 waveform and
posteriors; layer by layer the network's buffers are int8 state inputs and
outputs, ``state_io``, whose card entries give their scale and zero point),
written as ``model_stream_<format>.tflite`` with a model card (``card``
plus a ``streaming`` section) and checked like the other files: each parity
clip streamed from the initial state, the outputs of its last call against
Keras on its features (``kws_tf.export.parity``); ``stream_int8`` is gated by
``--max_accuracy_drop``. ``inference.StreamingTFLiteModel`` runs the files.
"""
import dataclasses
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert_phase import ConverterError

from kws_tf import features, inference, records
from kws_tf import model_dir as model_dir_lib
from kws_tf.export import card as card_lib
from kws_tf.export import files, serving, state_io, stream_layers
from kws_tf.export.errors import ExportError

FORMATS = ("stream_float32", "stream_int8")
# Calls whose median time the card reports.
LATENCY_RUNS = 20
# The log-mel of silence: 10 * log10 of the front end's power floor (1e-10).
SILENCE_DB = -100.0
OUTPUTS = ("logits", "probabilities")
STATE_PREFIX, NEXT_PREFIX = state_io.STATE_PREFIX, state_io.NEXT_PREFIX


def _reflect(positions: np.ndarray, length: int) -> np.ndarray:
  """Indices into ``length`` samples of window positions reflect-padded once at
  both ends (numpy.pad's "reflect": -1 -> 1, length -> length - 2)."""
  positions = np.abs(positions)
  return np.where(positions >= length, 2 * (length - 1) - positions, positions)


@dataclasses.dataclass(frozen=True)
class StreamLayout:
  """Where each of a window's log-mel frames comes from, for one front end,
  window and hop (module docstring).

  Frame ``t`` of a window reads window positions ``[t * step - pad, t * step -
  pad + fft_length)`` (``pad`` is ``fft_length // 2`` when centred, else 0).
  Frames ``first_inner..last_inner`` read no reflected sample: they are the
  same frames of the stream in every window that holds them. The ``left``
  frames before them and the ``right`` frames after them read reflected
  samples of their window's first / last samples.

  Fields:
    front_end: the ``features.MfccConfig`` of the file.
    clip_samples: samples of a window. hop_samples: samples per call.
  """
  front_end: features.MfccConfig
  clip_samples: int
  hop_samples: int

  def __post_init__(self):
    if self.front_end.format != "mfcc":
      raise ValueError(f"a streaming file needs an mfcc front end, got "
                       f"{self.front_end.format!r}")
    stream_layers.check_hop(self.front_end, self.clip_samples, self.hop_samples)
    if self.hop_frames > self.inner_frames:
      raise ValueError(f"the stream's hop of {self.hop_samples} samples ({self.hop_frames} "
                       f"frames) is longer than the window's {self.inner_frames} frames "
                       "without reflected samples")

  @property
  def step(self) -> int:
    return self.front_end.frame_step

  @property
  def pad(self) -> int:
    return self.front_end.fft_length // 2 if self.front_end.center else 0

  @property
  def frames(self) -> int:
    """Frames of a window."""
    return self.front_end.num_frames(self.clip_samples)

  @property
  def first_inner(self) -> int:
    return -(-self.pad // self.step)

  @property
  def last_inner(self) -> int:
    return (self.clip_samples + self.pad - self.front_end.fft_length) // self.step

  @property
  def inner_frames(self) -> int:
    return self.last_inner - self.first_inner + 1

  @property
  def hop_frames(self) -> int:
    """New frames per call: ``hop_samples / frame_step``."""
    return self.hop_samples // self.step

  @property
  def calls_per_window(self) -> int:
    return self.clip_samples // self.hop_samples

  @property
  def ring_frames(self) -> int:
    """Inner frames of a window kept from the calls before."""
    return self.inner_frames - self.hop_frames

  @property
  def left_frames(self) -> int:
    return self.first_inner

  @property
  def right_frames(self) -> int:
    return self.frames - 1 - self.last_inner

  def _frame_samples(self, first: int, count: int) -> np.ndarray:
    """int ``[count, fft_length]``: the window sample each of ``count`` frames
    from frame ``first`` on reads at each of its positions (reflected)."""
    frames = np.arange(first, first + count)[:, np.newaxis]
    positions = frames * self.step - self.pad + np.arange(self.front_end.fft_length)
    return _reflect(positions, self.clip_samples)

  @property
  def left_samples(self) -> int:
    """Samples at the window's start that its left frames read."""
    return int(self._frame_samples(0, self.left_frames).max(initial=-1)) + 1

  @property
  def right_samples(self) -> int:
    """Samples at the window's end that its right frames read."""
    return self.clip_samples - int(self._frame_samples(
        self.last_inner + 1, self.right_frames).min(initial=self.clip_samples))

  @property
  def new_samples(self) -> int:
    """Samples at the window's end that its ``hop_frames`` newest inner frames read."""
    return self.clip_samples - int(self._frame_samples(
        self.last_inner - self.hop_frames + 1, self.hop_frames).min())

  @property
  def left_hops(self) -> int:
    """Calls, counted back from a window's own, by which its first
    ``left_samples`` samples have arrived: its left frames are made then."""
    return -(-self.left_samples // self.hop_samples)

  @property
  def queue(self) -> int:
    """Left-edge blocks in flight: made ``queue`` calls before their window's."""
    return self.calls_per_window - self.left_hops if self.left_frames else 0

  @property
  def buffer_samples(self) -> int:
    """Samples kept from the calls before (with the hop: the last
    ``buffer_samples + hop_samples`` samples of the window)."""
    return max(0, self.new_samples, self.right_samples,
               self.left_hops * self.hop_samples) - self.hop_samples

  def frame_indices(self) -> np.ndarray:
    """int32 ``[left_frames + hop_frames + right_frames, fft_length]``: the frames
    one call computes, as indices into its last ``buffer_samples +
    hop_samples`` samples: the left frames of the window ``queue`` calls ahead
    (it starts ``left_hops`` hops before this window's end), the newest inner
    frames and this window's right frames."""
    offset = self.clip_samples - self.buffer_samples - self.hop_samples
    ahead = self.clip_samples - self.left_hops * self.hop_samples
    return np.concatenate([
        self._frame_samples(0, self.left_frames) + ahead,
        self._frame_samples(self.last_inner - self.hop_frames + 1, self.hop_frames),
        self._frame_samples(self.last_inner + 1, self.right_frames)]).astype(np.int32) - offset

  def state_shapes(self) -> Dict[str, Tuple[int, ...]]:
    """State name -> shape (batch 1), the states of size 0 left out."""
    mels = self.front_end.num_mel_bins
    shapes = {"samples": (1, self.buffer_samples), "log_mel": (1, self.ring_frames, mels),
              "left_edges": (1, self.queue, self.left_frames, mels)}
    return {name: shape for name, shape in shapes.items() if math.prod(shape) > 0}

  def initial_state(self) -> Dict[str, np.ndarray]:
    """State name -> its value before the stream's first call: that of silence."""
    return {name: np.full(shape, 0.0 if name == "samples" else SILENCE_DB, np.float32)
            for name, shape in self.state_shapes().items()}


def stream_layout(model, front_end, clip_samples: int, hop_samples: int):
  """How ``model`` streams: a ``stream_layers.LayerPlan`` when it streams layer
  by layer (``stream_layers.unsupported`` is None), else a ``StreamLayout``
  (its network on the whole window every call). ValueError for a hop that
  does not fit."""
  if stream_layers.unsupported(model, front_end) is None:
    return stream_layers.LayerPlan(model, front_end, clip_samples, hop_samples)
  return StreamLayout(front_end, clip_samples, hop_samples)


class StreamingModule(tf.Module):
  """A trained kws student with its front end, run one hop at a time.

  ``step`` is the signature of the file (module docstring): keyword tensors
  ``waveform`` and ``state_<name>`` (``layout.state_shapes``), returning
  ``logits``, ``probabilities`` and ``next_state_<name>``. ``layout`` is
  ``stream_layout``'s: a student that streams layer by layer computes only
  each layer's new frames (``kws_tf.export.stream_layers``); any other runs
  its network on the window's features.

  Args:
    model: a kws model of the ``kws_tf.models`` contract.
    spec: its ``ModelSpec``.
    clip_samples: samples of a window (the records' clip).
    hop_samples: samples per call.
  """

  def __init__(self, model, spec: model_dir_lib.ModelSpec, clip_samples: int,
               hop_samples: int):
    super().__init__(name="streaming")
    if spec.task != "kws":
      raise ValueError(f"only kws models stream (one posterior per window); model "
                       f"{spec.name!r} is {spec.task}")
    # The SavedModel tracks the model's variables, not the Keras model: saving
    # that would also trace every layer's call, which no reader of the file uses.
    object.__setattr__(self, "model", model)
    self.model_variables = list(model.variables)
    self.layout = stream_layout(model, serving.export_front_end(spec.feature_params),
                                clip_samples, hop_samples)
    self.by_layers = isinstance(self.layout, stream_layers.LayerPlan)
    self.state_names = list(self.layout.state_shapes())
    norm = spec.normalization
    self._mean = None if norm is None else np.asarray(norm["mean"], np.float32)
    self._inverse_std = None if norm is None else 1.0 / np.asarray(norm["std"], np.float32)
    specs = [tf.TensorSpec([1, hop_samples], tf.float32, serving.WAVEFORM)]
    specs += [tf.TensorSpec(shape, tf.float32, STATE_PREFIX + name)
              for name, shape in self.layout.state_shapes().items()]
    self.step = tf.function(self._step, input_signature=specs)
    self._initial = (self._silence() if self.by_layers else
                     {STATE_PREFIX + k: v for k, v in self.layout.initial_state().items()})

  def initial_state(self) -> Dict[str, np.ndarray]:
    """``state_<name>`` -> its value before the first call: that of silence
    (the window path: samples 0, log-mel -100 dB; layer by layer: each state's
    frames as a stream of zeros makes them)."""
    return dict(self._initial)

  def _silence(self) -> Dict[str, np.ndarray]:
    """The state after a window of zeros (from zeros): every frame of it made
    from zeros alone, each state's last frame repeated (the frames of a stream
    of zeros are all equal)."""
    state = {STATE_PREFIX + n: tf.zeros(shape) for n, shape in self.layout.state_shapes().items()}
    hop = tf.zeros([1, self.layout.hop_samples])
    for _ in range(self.layout.calls_per_window):
      outputs = self.step(hop, *state.values())
      state = {STATE_PREFIX + n: outputs[NEXT_PREFIX + n] for n in self.state_names}
    return {name: np.broadcast_to(value.numpy()[:, -1:], value.shape).copy()
            for name, value in state.items()}

  def _normalise(self, values: tf.Tensor) -> tf.Tensor:
    """Features standardised as the model was trained on them."""
    if self._mean is None:
      return values
    return (values - self._mean) * self._inverse_std

  def _step(self, waveform: tf.Tensor, *states: tf.Tensor) -> Dict[str, tf.Tensor]:
    state = dict(zip(self.state_names, states))
    if self.by_layers:
      logits, outputs = self.layout.run(
          self.model, waveform, state,
          None if self._mean is None else (self._mean, self._inverse_std))
    else:
      logits, outputs = self._window_step(waveform, state)
    result = {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}
    result.update({NEXT_PREFIX + name: value for name, value in outputs.items()})
    return result

  def _window_step(self, waveform: tf.Tensor, state: Dict[str, tf.Tensor]
                   ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """One call of a ``StreamLayout``: the front end's new log-mel frames, then
    the rest of the front end and the network on the window's frames."""
    layout, front_end = self.layout, self.layout.front_end
    outputs = {}
    with tf.name_scope(serving.FRONT_END_SCOPE):
      buffer = tf.concat([state["samples"], waveform], 1) if "samples" in state else waveform
      if "samples" in state:
        outputs["samples"] = buffer[:, layout.hop_samples:]
      # The frames of this call side by side, each fft_length samples, framed
      # again without overlap: one DFT for all.
      frames = tf.gather(buffer, layout.frame_indices().reshape(-1), axis=1)
      power = features.power_spectrogram(
          frames, None, front_end.analysis_window(), front_end.fft_length, center=False,
          dft=front_end.dft, num_bins=front_end.mel_matrix().shape[1])
      made = front_end.log_mel(power)
      left, new = layout.left_frames, layout.hop_frames
      parts = []
      if left:
        block = made[:, :left]
        if layout.queue:
          blocks = tf.concat([state["left_edges"], block[:, tf.newaxis]], 1)
          outputs["left_edges"] = blocks[:, 1:]
          block = blocks[:, 0]
        parts.append(block)
      if "log_mel" in state:
        inner = tf.concat([state["log_mel"], made[:, left:left + new]], 1)
        outputs["log_mel"] = inner[:, new:]
        parts.append(inner)
      else:
        parts.append(made[:, left:left + new])
      if layout.right_frames:
        parts.append(made[:, left + new:])
      num_frames = tf.constant([layout.frames], tf.int32)
      values = self._normalise(front_end.cepstra(tf.concat(parts, 1), num_frames))
    logits = self.model({"features": values, "num_frames": num_frames},
                        training=False)["logits"]
    return logits, outputs

  def stream(self, waveform: np.ndarray) -> List[Dict[str, np.ndarray]]:
    """The inputs of every call over ``waveform [samples]`` (a whole number of
    hops) from the initial state, as the file's signature takes them."""
    hop = self.layout.hop_samples
    state = self.initial_state()
    inputs = []
    for start in range(0, len(waveform) - hop + 1, hop):
      call = {serving.WAVEFORM: np.asarray(waveform[start:start + hop], np.float32)[np.newaxis],
              **state}
      inputs.append(call)
      outputs = self.step(call[serving.WAVEFORM], *(state[STATE_PREFIX + n]
                                                    for n in self.state_names))
      state = {STATE_PREFIX + n: outputs[NEXT_PREFIX + n].numpy() for n in self.state_names}
    return inputs

  def calibration_calls(self, clips: Sequence[np.ndarray]) -> List[Dict[str, np.ndarray]]:
    """The inputs of the calls that calibrate stream_int8 on ``clips`` (each of
    ``clip_samples``): for a stream of the window path the last call of each
    clip, whose network sees the clip's window; layer by layer, where a call's
    network sees only its new frames (and the state's), every call from the
    first full window on of the clips streamed end to end, so that each
    clip's frames pass through."""
    if not self.by_layers:
      return [self.stream(clip)[-1] for clip in clips]
    return self.stream(np.concatenate(clips))[self.layout.calls_per_window - 1:]

  def save(self, path: str) -> None:
    """Writes the SavedModel of ``step`` to ``path``."""
    tf.saved_model.save(self, path, signatures={serving.SIGNATURE: self.step})


def _float_tensors(calibrated: bytes, model_name: str) -> List[str]:
  """Tensors of a calibrated streaming file that int8 quantization must leave
  float: all but the Keras model's and its logits (the front end, the
  normalisation, the state, and the softmax: int8 probabilities would step by
  1/256 and stop at 255/256, too coarse for an always-on detector's threshold,
  which lies near 1)."""
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_content=calibrated)
  runner = interpreter.get_signature_runner(serving.SIGNATURE)
  names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
  logits = names[runner.get_output_details()["logits"]["index"]]
  return [name for name in names.values()
          if not name.startswith(f"{model_name}/") and name != logits]


def convert(saved_model_dir: str, kind: str, model_name: str,
            representative: Optional[Sequence[Dict[str, np.ndarray]]] = None) -> bytes:
  """The TFLite file of a ``StreamingModule`` SavedModel.

  Args:
    kind: one of ``FORMATS``.
    model_name: the Keras model's name (its ops are the ones stream_int8 quantizes).
    representative: stream_int8: inputs of calls whose windows calibrate the network.
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  if kind == "stream_float32":
    return converter.convert()
  if kind != "stream_int8":
    raise ValueError(f"unknown streaming format {kind!r}, expected one of {FORMATS}")
  if not representative:
    raise ValueError("stream_int8 conversion needs representative calls")
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: iter(representative)
  # Calibrate, then quantize the network only (as convert.convert does for int8).
  from tensorflow.lite.python import convert as lite_convert
  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  calibrated = converter.convert()
  quantized = lite_convert.mlir_quantize(
      calibrated, fully_quantize=False, input_data_type=tf.float32,
      output_data_type=tf.float32,
      denylisted_nodes=_float_tensors(calibrated, model_name))
  return state_io.int8_state(quantized)


def check_supported(spec: model_dir_lib.ModelSpec, clip_samples: Optional[int],
                    hop_seconds: float) -> None:
  """ExportError unless ``spec``'s model can be streamed at ``hop_seconds``."""
  if spec.task != "kws":
    raise ExportError(f"streaming formats are for kws models; model {spec.name!r} is "
                      f"{spec.task}")
  try:
    stream_layout(model_dir_lib.build_model(spec), serving.export_front_end(spec.feature_params),
                  clip_samples, hop_samples(spec, hop_seconds))
  except ValueError as e:
    raise ExportError(f"cannot stream model {spec.name!r}: {e}") from e


def hop_samples(spec: model_dir_lib.ModelSpec, hop_seconds: float) -> int:
  """``hop_seconds`` in samples at the model's sample rate."""
  return int(round(hop_seconds * spec.sample_rate))


def _card_initial(value: np.ndarray):
  """A state's initial value in the card (a Python number of the array's kind):
  one number when every element has it, else the values along the last axis, the
  channels (``initial_state`` repeats one frame)."""
  if np.all(value == value.flat[0]):
    return value.flat[0].item()
  return value.reshape(-1, value.shape[-1])[0].tolist()


def _card_state(name: str, value: np.ndarray, detail: Optional[dict]) -> dict:
  """A state's entry in the card; ``detail``: its input in the file, whose dtype
  (int8: with the scale and zero point the initial value is quantized with)
  the entry takes."""
  entry = {"shape": list(value.shape), "dtype": "float32"}
  if detail is not None and detail["dtype"] == np.int8:
    scale, zero_point = detail["quantization"]
    value = state_io.quantize(value, scale, zero_point)
    entry.update(dtype="int8", scale=float(scale), zero_point=int(zero_point))
  entry["initial"] = _card_initial(value)
  entry["output"] = NEXT_PREFIX + name[len(STATE_PREFIX):]
  return entry


def streaming_card(module: StreamingModule, sample_rate: int,
                   path: Optional[str] = None) -> dict:
  """The ``streaming`` section of a streaming file's card. A state's ``initial``
  is a number or a list over its last axis, broadcast to its ``shape``
  (``numpy.full(shape, initial, dtype)``). ``path``: the file, whose int8 state
  inputs (``state_io``) the card gives as int8 with their scale and zero point
  (None: every state float32)."""
  layout = module.layout
  details = state_io.state_inputs(path) if path else {}
  state = {name: _card_state(name, value, details.get(name))
           for name, value in module.initial_state().items()}
  return {
      "hop_samples": layout.hop_samples, "hop_seconds": layout.hop_samples / sample_rate,
      "clip_samples": layout.clip_samples, "calls_per_window": layout.calls_per_window,
      "computes": ("the new frames of every layer" if module.by_layers else
                   "the new log-mel frames, then the network on the whole window"),
      "state": state,
      "semantics": (
          f"each call takes the next {layout.hop_samples} samples and the state outputs of "
          f"the call before (at the first call every state filled with its 'initial' "
          f"value), and gives the posteriors of the last {layout.clip_samples} samples, as "
          f"the non-streaming file computes them; before call {layout.calls_per_window} "
          "(the first full window) that window begins with zeros before the stream's "
          "start; delay: one hop"),
  }


def export(kinds: Sequence[str], model, spec: model_dir_lib.ModelSpec, clip_samples: int,
           hop_seconds: float, out_dir: str, scratch: str,
           calibration: Optional[Sequence[np.ndarray]], check: Callable, card_fields: dict,
           max_accuracy_drop: float, log=print) -> Tuple[Dict[str, dict], List[str]]:
  """Writes ``model_<kind>.tflite`` and its card for each streaming ``kind``.

  Args:
    kinds: formats of ``FORMATS``.
    clip_samples: samples of the model's window; hop_seconds: of a call.
    scratch: a folder for the SavedModel of the stream.
    calibration: stream_int8: clips of ``clip_samples`` whose windows calibrate it.
    check: ``runner -> parity result`` (``kws_tf.export.parity.parity`` on the
      export's examples), ``runner`` a clip -> outputs function.
    card_fields: the card fields shared by the export's files.
    max_accuracy_drop: the accuracy gate of stream_int8 (points).

  Returns the cards by format and the gate failures (one line each).
  """
  module = StreamingModule(model, spec, clip_samples, hop_samples(spec, hop_seconds))
  if module.by_layers:
    log(f"model {spec.name!r} streams layer by layer: each call computes the new frames of "
        "every layer")
  else:
    log(f"model {spec.name!r} streams its window: each call runs the network on the whole "
        f"window ({stream_layers.unsupported(model, module.layout.front_end)})")
  saved_model_dir = os.path.join(scratch, "stream_saved_model")
  module.save(saved_model_dir)
  cards, failures = {}, []
  for kind in kinds:
    representative = None
    if kind == "stream_int8":
      representative = module.calibration_calls(calibration)
    checked = os.path.join(scratch, f"model_{kind}.tflite")
    try:
      content = convert(saved_model_dir, kind, model.name, representative)
    except ConverterError as e:
      first = next((line for line in str(e).splitlines() if "error" in line), str(e))
      raise ExportError(f"the TFLite converter failed on the {kind} file of model "
                        f"{spec.name!r}: {first.strip()}") from e
    records.write_bytes(checked, content)
    stream_card = streaming_card(module, spec.sample_rate, checked)
    result = check(inference.StreamingTFLiteModel(checked, stream_card))
    gated = kind == "stream_int8"
    passed = not gated or result["drop_points"] <= max_accuracy_drop
    path = files.place(checked, out_dir, kind, passed)
    runner = inference.StreamingTFLiteModel(path, stream_card)
    timed = inference.StreamingTFLiteModel(path, stream_card, num_threads=1)
    hop = np.zeros(module.layout.hop_samples, np.float32)
    latency = float(np.median(inference.call_times_ms(timed.step, hop, LATENCY_RUNS)))
    card = card_lib.model_card(
        name=os.path.splitext(os.path.basename(path))[0], kind=kind, path=path,
        inputs=card_lib.tensor(runner.input_detail),
        outputs={k: card_lib.tensor(v) for k, v in runner.output_details.items()
                 if k in OUTPUTS},
        parity_result=result, latency_ms=latency,
        latency_seconds=module.layout.hop_samples / spec.sample_rate, latency_runs=LATENCY_RUNS,
        max_accuracy_drop=max_accuracy_drop if gated else None, **card_fields)
    card["streaming"] = stream_card
    card_lib.write_card(os.path.splitext(path)[0], card)
    cards[kind] = card
    log(f"{path}: {card['size_bytes']:,} bytes, max |logit error| "
        f"{result['max_abs_logit_error']:.3g}, {result['exported']} vs Keras {result['keras']} "
        f"({result['drop_points']:+.2f} points), {latency:.3f} ms per call of "
        f"{stream_card['hop_seconds'] * 1000:g} ms")
    if not passed:
      failures.append(f"{files.tflite_path(out_dir, kind)} loses {result['drop_points']:.2f} "
                      f"points against Keras ({result['exported']} vs {result['keras']}), more "
                      f"than --max_accuracy_drop={max_accuracy_drop:g}; not written, kept as "
                      f"{path} for inspection")
  return cards, failures
