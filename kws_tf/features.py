"""The feature front end: waveform -> features, in TensorFlow (tf.signal).

One frozen dataclass per format ("raw", "power", "mfcc", "logmel", "pcen"). Every
config takes a float32 waveform in [-1, 1], shape ``[samples]``, or a batch
``[batch, samples]`` of waveforms zero-padded to one length with their valid
lengths ``[batch]``, and returns float32 features ``[frames, channels]`` or
``[batch, frames, channels]``. The valid frames of each example of a batch are
those of the example computed alone: everything that depends on the end of an
example (centre padding, the maxima used for clamps, delta edges) uses its own
length, and its frames past the end are zeros.

The computation is a ``tf.function`` with an input signature, traced once per
config object and input rank, with no numpy in the call path, so the same
config serves the offline TFRecord converter and exported SavedModel / TFLite
graphs. Constants (window, mel matrix, DFT matrix, delta filters) are computed
once with numpy / librosa / scipy and embedded as graph constants. Products
with a constant matrix use tf.tensordot: one 2-D matrix product, faster on CPU
than a batched one.

Short-time Fourier transforms follow librosa: frames of ``fft_length`` samples
every ``frame_step`` samples, a periodic Hann window of ``frame_length``
samples centred in each frame, and with ``center=True`` the waveform
reflect-padded by ``fft_length // 2`` samples on both sides, so that frame
``t`` is centred on sample ``t * frame_step``. Reflect padding mirrors as many
times as needed, as numpy.pad(mode="reflect"), so any waveform of at least one
sample has a centred STFT.
"""
import abc
import dataclasses
import functools
from typing import Any, ClassVar, Dict, Optional

import librosa
import numpy as np
import scipy.fft
import scipy.signal
import tensorflow as tf

DFT_METHODS = ("fft", "matmul")

_POWER_TO_DB_AMIN = 1e-10
_WHISPER_LOG_FLOOR = 1e-10
_WHISPER_DYNAMIC_RANGE = 8.0


def _num_stft_frames(num_samples, fft_length: int, frame_step: int,
                     center: bool):
  """Number of STFT frames of a waveform of ``num_samples`` samples.

  ``num_samples`` is an int (gives an int) or an int32 tensor of lengths (gives
  an int32 tensor of the same shape).
  """
  if center:
    num_samples += 2 * (fft_length // 2)
  frames = 1 + (num_samples - fft_length) // frame_step
  return tf.maximum(frames, 0) if tf.is_tensor(frames) else max(frames, 0)


def _valid_mask(lengths: tf.Tensor, size) -> tf.Tensor:
  """bool ``[batch, size]``: True at ``[b, i]`` where ``i < lengths[b]``."""
  return tf.range(size) < lengths[:, tf.newaxis]


def _max_over_valid_frames(x: tf.Tensor, num_frames: tf.Tensor) -> tf.Tensor:
  """``[batch, 1, 1]``: maximum of ``x [batch, frames, channels]`` per example,
  over its first ``num_frames[b]`` frames (the lowest float32 if none)."""
  valid = tf.expand_dims(_valid_mask(num_frames, tf.shape(x)[1]), -1)
  return tf.reduce_max(tf.where(valid, x, x.dtype.min), axis=[1, 2],
                       keepdims=True)


def _centred_hann(frame_length: int, fft_length: int) -> np.ndarray:
  """Periodic Hann window of ``frame_length`` zero-padded to ``[fft_length]``.

  The window sits in the centre of the frame, as in librosa.
  """
  n = np.arange(frame_length)
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / frame_length)
  left = (fft_length - frame_length) // 2
  return np.pad(window, (left, fft_length - frame_length - left))


def _folded_dft_matrices(window: np.ndarray, num_bins: Optional[int] = None):
  """Real DFT of a symmetric window's frames, folded in half: two float32
  ``[fft_length // 2, num_bins]`` matrices with the window inside.

  A real frame's DFT needs only its even part ``x[n] + x[N - n]`` for the
  cosines and its odd part ``x[n] - x[N - n]`` for the sines, which halves the
  multiply-adds. With ``lo = x[1 : N/2 + 1]`` and ``hi = x[N/2 : N]`` reversed
  (``hi[j] = x[N - 1 - j]``), ``(lo + hi) @ real`` and ``(lo - hi) @ imag``
  give the real and imaginary parts of bins ``0..num_bins - 1`` (default all
  ``N // 2 + 1``). This needs ``window[N - n] == window[n]`` and
  ``window[0] == 0`` (a periodic Hann window centred in an even frame), so
  that ``x[0]`` drops out and the window factors out of each pair.
  """
  fft_length = window.shape[0]
  half = fft_length // 2
  if (fft_length % 2 or window[0] != 0
      or not np.allclose(window[1:], window[:0:-1])):
    raise ValueError(
        "the matrix DFT needs an even fft_length and a window centred in it "
        f"(fft_length - frame_length even); got fft_length {fft_length}")
  n = np.arange(1, half + 1)[:, None]
  k = np.arange(num_bins or half + 1)[None, :]
  angle = 2.0 * np.pi * ((n * k) % fft_length) / fft_length
  # x[N/2] is its own pair: lo + hi holds it twice.
  weight = window[1:half + 1, None] * np.where(n == half, 0.5, 1.0)
  # Rows n = N/2 of the sines are sin(pi k) = 0, as lo - hi is there.
  return ((weight * np.cos(angle)).astype(np.float32),
          (-weight * np.sin(angle)).astype(np.float32))


def _reflect_pad(waveform: tf.Tensor, lengths: tf.Tensor,
                 pad: int) -> tf.Tensor:
  """Reflect-pads every example of a batch around its own first and last sample.

  Args:
    waveform: float32 ``[batch, samples]``; example ``b`` is
      ``waveform[b, :lengths[b]]``.
    lengths: int32 ``[batch]``, each in [1, samples].
    pad: samples added on each side.

  Returns:
    float32 ``[batch, samples + 2 * pad]``: for example ``b``, the first
    ``lengths[b] + 2 * pad`` samples are
    ``numpy.pad(waveform[b, :lengths[b]], pad, mode="reflect")``; the rest
    hold whatever followed the example in ``waveform``, then zeros.
  """
  # The head sits at the same columns in every row: concatenated. The tail
  # starts after each example's own last sample: written over the zeros that
  # follow it, by flat index (gathering every padded sample instead costs
  # several times as much).
  batch = tf.shape(lengths)[0]
  width = tf.shape(waveform)[1] + 2 * pad
  # Mirroring repeatedly at samples 0 and length - 1 is periodic with period
  # 2 * (length - 1) (a one-sample example repeats its sample).
  period = tf.maximum(2 * (lengths - 1), 1)[:, tf.newaxis]

  def mirrored(positions):
    """The examples' samples at ``positions [batch, pad]``, relative to each
    example's first sample, mirrored endlessly at both ends."""
    folded = tf.math.floormod(positions, period)
    return tf.gather(waveform, tf.minimum(folded, period - folded), batch_dims=1)

  offsets = tf.range(pad)
  head = mirrored(tf.broadcast_to(offsets - pad, [batch, pad]))
  tail_positions = lengths[:, tf.newaxis] + offsets
  padded = tf.concat([head, waveform, tf.zeros([batch, pad])], axis=1)
  flat_index = tf.range(batch)[:, tf.newaxis] * width + pad + tail_positions
  padded = tf.tensor_scatter_nd_update(
      tf.reshape(padded, [-1]), tf.reshape(flat_index, [-1, 1]),
      tf.reshape(mirrored(tail_positions), [-1]))
  return tf.reshape(padded, [batch, width])


def power_spectrogram(waveform: tf.Tensor, lengths: tf.Tensor,
                      window: np.ndarray, frame_step: int, center: bool,
                      dft: str, num_bins: Optional[int] = None) -> tf.Tensor:
  """|STFT|^2 of a batch of zero-padded waveforms.

  Args:
    waveform: float32 ``[batch, samples]``; example ``b`` is
      ``waveform[b, :lengths[b]]``.
    lengths: int32 ``[batch]``, each in [1, samples]; used by the centre
      padding, which mirrors each example around its own last sample.
    window: the analysis window, ``[fft_length]`` (its length is the FFT size).
    frame_step: hop between frames, in samples.
    center: reflect-pad ``fft_length // 2`` samples on both sides first.
    dft: "fft" (tf.signal.rfft) or "matmul" (a DFT as one matrix product, for
      TFLite, whose RFFT takes only power-of-two sizes).
    num_bins: the lowest bins kept (a mel bank that ends below the Nyquist
      frequency reads no more; the matrix product then computes no more);
      None keeps all ``fft_length // 2 + 1``.

  Returns:
    float32 ``[batch, frames, num_bins]``, power per bin, with
    ``frames`` those of ``samples`` samples. Frames past the end of an example
    (see ``_num_stft_frames``) read what follows it.
  """
  fft_length = window.shape[0]
  if center:
    waveform = _reflect_pad(waveform, lengths, fft_length // 2)
  frames = _frames(waveform, fft_length, frame_step)
  if dft == "fft":
    spectrum = tf.signal.rfft(frames * window.astype(np.float32))
    power = tf.square(tf.math.real(spectrum)) + tf.square(tf.math.imag(spectrum))
    # Sliced once real: TFLite cannot slice a complex tensor.
    return power if num_bins is None else power[..., :num_bins]
  if dft == "matmul":
    # Two products rather than one split in two: TFLite's int8 conversion
    # quantizes a SPLIT even when its producer and consumers stay float.
    real_matrix, imag_matrix = _folded_dft_matrices(window, num_bins)
    half = fft_length // 2
    lo = frames[..., 1:half + 1]
    hi = tf.reverse(frames[..., half:], axis=[-1])
    real = tf.tensordot(lo + hi, real_matrix, 1)
    imag = tf.tensordot(lo - hi, imag_matrix, 1)
    return tf.square(real) + tf.square(imag)
  raise ValueError(f"unknown dft {dft!r}, expected one of {DFT_METHODS}")


def _frames(waveform: tf.Tensor, frame_length: int, frame_step: int) -> tf.Tensor:
  """``tf.signal.frame(waveform, frame_length, frame_step)``: ``[batch, frames,
  frame_length]``. Frames side by side (``frame_step == frame_length``) of a
  waveform of known length are its samples reshaped: one op in a TFLite file
  instead of a gather between two reshapes."""
  samples = waveform.shape[-1]
  if frame_step != frame_length or samples is None or waveform.shape.rank != 2:
    return tf.signal.frame(waveform, frame_length, frame_step)
  count = samples // frame_length
  if count * frame_length != samples:
    waveform = waveform[:, :count * frame_length]
  return tf.reshape(waveform, [-1, count, frame_length])


def _bins_read(mel_matrix: np.ndarray) -> int:
  """Bins up to the highest one with a nonzero weight in ``[mels, bins]``."""
  used = np.flatnonzero(np.any(mel_matrix != 0, axis=0))
  return int(used[-1]) + 1 if used.size else 1


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


class _FeatureConfig(abc.ABC):
  """Behaviour shared by the format dataclasses.

  A subclass defines ``format``, ``num_channels``, ``num_frames`` and
  ``_features``.
  """
  format: ClassVar[str]

  @property
  @abc.abstractmethod
  def num_channels(self) -> int:
    """Channels of the features."""

  @abc.abstractmethod
  def num_frames(self, num_samples):
    """Frames of a waveform of ``num_samples`` samples.

    Args:
      num_samples: an int, or an int32 tensor of lengths (e.g. ``[batch]``).

    Returns:
      an int, or an int32 tensor of the shape of ``num_samples``.
    """

  @abc.abstractmethod
  def _features(self, waveform: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """float32 ``[batch, frames, channels]`` of a zero-padded batch.

    Args:
      waveform: float32 ``[batch, samples]``.
      lengths: int32 ``[batch]``, valid samples per example, in [1, samples].

    Returns:
      frames ``[0, num_frames(lengths[b]))`` of example ``b`` as computed on
      ``waveform[b, :lengths[b]]`` alone; the later frames may hold anything.
    """

  def _masked_features(self, waveform: tf.Tensor,
                       lengths: tf.Tensor) -> tf.Tensor:
    """``_features`` with the frames past the end of each example zeroed."""
    features = self._features(waveform, lengths)
    valid = _valid_mask(self.num_frames(lengths), tf.shape(features)[1])
    return tf.where(tf.expand_dims(valid, -1), features, 0.0)

  @property
  def hop_samples(self) -> int:
    """Samples between the starts of two frames: ``frame_step`` (raw: 1)."""
    return self.frame_step

  @property
  def frame_seconds(self) -> float:
    """Seconds between the starts of two frames: ``hop_samples / sample_rate``."""
    return self.hop_samples / self.sample_rate

  def to_dict(self) -> Dict[str, Any]:
    """JSON-serialisable fields, with the format name under "format"."""
    return {"format": self.format, **dataclasses.asdict(self)}

  @functools.cached_property
  def _batch_function(self) -> tf.types.experimental.GenericFunction:
    return tf.function(
        self._masked_features, autograph=False,
        input_signature=[tf.TensorSpec([None, None], tf.float32),
                         tf.TensorSpec([None], tf.int32)])

  @functools.cached_property
  def _pcm16_batch_function(self) -> tf.types.experimental.GenericFunction:
    def pcm16(waveform, lengths):
      return self._masked_features(
          tf.cast(waveform, tf.float32) * (1.0 / 32768.0), lengths)
    return tf.function(
        pcm16, autograph=False,
        input_signature=[tf.TensorSpec([None, None], tf.int16),
                         tf.TensorSpec([None], tf.int32)])

  @functools.cached_property
  def _single_function(self) -> tf.types.experimental.GenericFunction:
    def single(waveform):
      return self._masked_features(waveform[tf.newaxis],
                                   tf.shape(waveform)[:1])[0]
    return tf.function(
        single, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.float32)])

  def compute(self, waveform, lengths=None) -> tf.Tensor:
    """Features of a waveform, or of a batch of zero-padded waveforms.

    Args:
      waveform: floating point, in [-1, 1], ``[samples]`` or
        ``[batch, samples]`` (tensor or array); cast to float32. Or int16
        PCM samples ``x``, taken as ``x / 32768`` (a batch is scaled inside
        the graph, which moves half the bytes of a float batch).
      lengths: batches only: integer ``[batch]``, the valid samples of each
        example, each in [1, samples] (checked when executing eagerly); what
        follows them is padding, which does not change any valid frame. None:
        every sample is valid.

    Returns:
      float32 ``[frames, channels]`` or ``[batch, frames, channels]``, with
      ``frames = num_frames(samples)``. In a batch, frames
      ``[0, num_frames(lengths[b]))`` of example ``b`` are the features of
      ``waveform[b, :lengths[b]]`` alone (to float32 rounding) and its later
      frames are zeros.
    """
    waveform = tf.convert_to_tensor(waveform)
    batch_function = self._batch_function
    if waveform.dtype == tf.int16 and waveform.shape.rank == 2:
      batch_function = self._pcm16_batch_function
    elif waveform.dtype == tf.int16:
      waveform = tf.cast(waveform, tf.float32) * (1.0 / 32768.0)
    elif waveform.dtype.is_floating:
      waveform = tf.cast(waveform, tf.float32)
    else:
      raise ValueError(
          "expected a floating point waveform in [-1, 1] or int16 samples, "
          f"got {waveform.dtype}")
    if waveform.shape.rank == 1 and lengths is None:
      return self._single_function(waveform)
    if waveform.shape.rank != 2:
      raise ValueError(
          "expected a waveform [samples], or [batch, samples] with optional "
          f"lengths [batch], got shape {waveform.shape} and lengths {lengths}")
    if lengths is None:
      return batch_function(
          waveform, tf.fill(tf.shape(waveform)[:1], tf.shape(waveform)[1]))
    lengths = tf.convert_to_tensor(lengths)
    if not lengths.dtype.is_integer or not lengths.shape.is_compatible_with(
        waveform.shape[:1]):
      raise ValueError(
          f"expected integer lengths [batch] for a waveform of shape "
          f"{waveform.shape}, got {lengths.dtype} {lengths.shape}")
    lengths = tf.cast(lengths, tf.int32)
    if tf.executing_eagerly():
      values = lengths.numpy()
      if not np.all((values >= 1) & (values <= waveform.shape[1])):
        raise ValueError(f"lengths must be in [1, {waveform.shape[1]}] "
                         f"(the padded length), got {values}")
    return batch_function(waveform, lengths)

  def __call__(self, waveform, lengths=None) -> tf.Tensor:
    """Same as ``compute``."""
    return self.compute(waveform, lengths)

  def __getstate__(self) -> Dict[str, Any]:
    """Pickle the fields only, not the traced functions (worker processes)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class RawConfig(_FeatureConfig):
  """The waveform itself: ``[samples, 1]``, one frame per sample."""
  format: ClassVar[str] = "raw"
  sample_rate: int = 16000

  def __post_init__(self):
    _check(self.sample_rate > 0, f"sample_rate must be > 0: {self.sample_rate}")

  @property
  def num_channels(self) -> int:
    return 1

  @property
  def hop_samples(self) -> int:
    return 1

  def num_frames(self, num_samples):
    return num_samples

  def _features(self, waveform: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    return waveform[:, :, tf.newaxis]


def _check_stft_fields(config) -> None:
  """Checks the STFT fields shared by ``PowerConfig`` and ``MfccConfig``."""
  _check(config.sample_rate > 0, f"sample_rate must be > 0: {config.sample_rate}")
  _check(0 < config.frame_length <= config.fft_length,
         f"need 0 < frame_length <= fft_length: {config.frame_length}, "
         f"{config.fft_length}")
  _check(config.frame_step > 0, f"frame_step must be > 0: {config.frame_step}")
  _check(config.dft in DFT_METHODS,
         f"unknown dft {config.dft!r}, expected one of {DFT_METHODS}")
  _check(config.dft != "matmul" or (config.fft_length % 2 == 0
                                    and config.frame_length % 2 == 0),
         "the matrix DFT folds each frame in half: it needs an even "
         f"fft_length and frame_length, got {config.fft_length} and "
         f"{config.frame_length}")


def _check_mel_edges(config) -> None:
  """Checks the mel bank's frequency range (``MfccConfig``, ``PcenConfig``)."""
  _check(0 <= config.lower_edge_hertz < config.upper_edge_hertz <= config.sample_rate / 2,
         "need 0 <= lower_edge_hertz < upper_edge_hertz <= sample_rate / 2: "
         f"{config.lower_edge_hertz}, {config.upper_edge_hertz}")


def _slaney_mel_bank(config) -> np.ndarray:
  """float32 ``[num_mel_bins, bins]``: the Slaney mel bank of ``config`` (its
  rate, DFT size, bands and edges) over the lowest ``bins`` DFT bins, up to the
  highest one it weights."""
  mel_matrix = librosa.filters.mel(
      sr=config.sample_rate, n_fft=config.fft_length, n_mels=config.num_mel_bins,
      fmin=config.lower_edge_hertz, fmax=config.upper_edge_hertz, htk=False, norm="slaney")
  return mel_matrix[:, :_bins_read(mel_matrix)].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PowerConfig(_FeatureConfig):
  """Power spectrogram |STFT|^2, optionally natural-log compressed.

  Fields:
    frame_length: Hann window length in samples (<= fft_length), 512 = 32 ms.
    frame_step: hop in samples, 160 = 10 ms.
    fft_length: FFT size in samples; channels are fft_length // 2 + 1.
    center: reflect-pad fft_length // 2 samples on both sides.
    log: return log(power + log_offset) instead of the power.
    log_offset: added to the power before the log.
    dft: "fft" or "matmul" (see ``power_spectrogram``).
  """
  format: ClassVar[str] = "power"
  sample_rate: int = 16000
  frame_length: int = 512
  frame_step: int = 160
  fft_length: int = 512
  center: bool = True
  log: bool = False
  log_offset: float = 1e-6
  dft: str = "fft"

  def __post_init__(self):
    _check_stft_fields(self)
    _check(self.log_offset > 0, f"log_offset must be > 0: {self.log_offset}")

  @property
  def num_channels(self) -> int:
    return self.fft_length // 2 + 1

  def num_frames(self, num_samples):
    return _num_stft_frames(num_samples, self.fft_length, self.frame_step,
                            self.center)

  def _features(self, waveform: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    power = power_spectrogram(
        waveform, lengths, _centred_hann(self.frame_length, self.fft_length),
        self.frame_step, self.center, self.dft)
    if self.log:
      return tf.math.log(power + self.log_offset)
    return power


@dataclasses.dataclass(frozen=True)
class MfccConfig(_FeatureConfig):
  """MFCCs with deltas and delta-deltas, as librosa computes them.

  Power spectrogram (as ``PowerConfig``) -> Slaney mel filter bank ->
  10 * log10(max(1e-10, mel)), clamped to the example's maximum - top_db ->
  orthonormal DCT-II, first num_mfcc coefficients -> Savitzky-Golay first and
  second derivatives over delta_width frames, edges replicated (librosa's
  ``feature.delta(mode="nearest")``). Channels: [mfcc, delta, delta2].

  A front end for streaming layer by layer (``kws_tf.export.stream_layers``):
  ``center=False, top_db=None, delta_width=0``. Then frame ``t`` is a function
  of samples ``[t * frame_step, t * frame_step + fft_length)`` alone: no
  reflected samples, no clamp at the example's maximum (the only floor is the
  absolute -100 dB of the 1e-10 power floor; librosa's ``power_to_db(top_db=None)``),
  no derivative across frames (channels: the num_mfcc MFCCs).

  Fields:
    frame_length, frame_step, fft_length, center, dft: as in ``PowerConfig``.
    num_mel_bins: mel bands.
    lower_edge_hertz, upper_edge_hertz: frequency range of the mel bank, Hz.
    num_mfcc: cepstral coefficients kept.
    top_db: dynamic range kept below the example's maximum, dB; None: no clamp.
    delta_width: frames in the derivative window (odd, >= 3); 0: no deltas.
  """
  format: ClassVar[str] = "mfcc"
  sample_rate: int = 16000
  frame_length: int = 512
  frame_step: int = 160
  fft_length: int = 512
  center: bool = True
  num_mel_bins: int = 40
  lower_edge_hertz: float = 20.0
  upper_edge_hertz: float = 8000.0
  num_mfcc: int = 13
  top_db: Optional[float] = 80.0
  delta_width: int = 9
  dft: str = "fft"

  def __post_init__(self):
    _check_stft_fields(self)
    _check_mel_edges(self)
    _check(0 < self.num_mfcc <= self.num_mel_bins,
           f"need 0 < num_mfcc <= num_mel_bins: {self.num_mfcc}, "
           f"{self.num_mel_bins}")
    _check(self.top_db is None or self.top_db > 0,
           f"top_db must be None or > 0: {self.top_db}")
    _check(self.delta_width == 0 or (self.delta_width >= 3 and self.delta_width % 2 == 1),
           f"delta_width must be 0 (no deltas) or odd and >= 3: {self.delta_width}")

  @property
  def num_channels(self) -> int:
    return (3 if self.delta_width else 1) * self.num_mfcc

  def num_frames(self, num_samples):
    return _num_stft_frames(num_samples, self.fft_length, self.frame_step,
                            self.center)

  def dct_matrix(self) -> np.ndarray:
    """``[num_mel_bins, num_mfcc]``: orthonormal DCT-II as a matrix product.

    A matrix rather than tf.signal.dct, which TFLite cannot convert.
    """
    identity = np.eye(self.num_mel_bins)
    dct = scipy.fft.dct(identity, type=2, norm="ortho", axis=-1)
    return dct[:, :self.num_mfcc].astype(np.float32)

  def _delta_filters(self) -> np.ndarray:
    """``[delta_width, num_mfcc, 2 * num_mfcc]``: conv1d filters of the first
    and second derivatives (Savitzky-Golay correlation taps) of every
    coefficient; output ``c`` is the delta, ``num_mfcc + c`` the delta-delta
    of coefficient ``c``.
    """
    taps = np.stack([
        scipy.signal.savgol_coeffs(self.delta_width, order, deriv=order,
                                   use="dot")
        for order in (1, 2)
    ], axis=1)
    filters = np.einsum("wo,cd->wcod", taps, np.eye(self.num_mfcc))
    return filters.reshape(self.delta_width, self.num_mfcc,
                           2 * self.num_mfcc).astype(np.float32)

  def analysis_window(self) -> np.ndarray:
    """``[fft_length]``: the periodic Hann window of ``frame_length`` samples
    centred in each frame."""
    return _centred_hann(self.frame_length, self.fft_length)

  def mel_matrix(self) -> np.ndarray:
    """float32 ``[num_mel_bins, bins]``: the Slaney mel bank over the lowest
    ``bins`` DFT bins, up to the highest one it weights."""
    return _slaney_mel_bank(self)

  def log_mel(self, power: tf.Tensor) -> tf.Tensor:
    """``[..., frames, num_mel_bins]``: 10 * log10(max(1e-10, mel)) of a power
    spectrogram ``[..., frames, bins]`` (``bins`` those of ``mel_matrix``).

    Each frame's value depends on that frame only (the clamp to the example's
    maximum is ``cepstra``'s).
    """
    mel = tf.tensordot(power, self.mel_matrix().T, 1)
    return 10.0 * tf.math.log(tf.maximum(mel, _POWER_TO_DB_AMIN)) / np.log(10.0)

  def cepstra(self, db: tf.Tensor, num_frames: tf.Tensor) -> tf.Tensor:
    """``[batch, frames, num_channels]``: MFCCs, deltas and delta-deltas of
    ``log_mel`` values ``db [batch, frames, num_mel_bins]``, of which the first
    ``num_frames [batch]`` (int32) are each example's valid frames (they set
    the clamp's maximum and the delta edges). Without a clamp (``top_db``
    None) and without deltas (``delta_width`` 0), each frame's MFCCs are those
    of its own ``db`` frame."""
    if self.top_db is not None:
      db_max = _max_over_valid_frames(db, num_frames)
      db = tf.maximum(db, db_max - self.top_db)
    mfcc = tf.tensordot(db, self.dct_matrix(), 1)
    if not self.delta_width:
      return mfcc
    # Edge replication at the example's own ends: frame index clipped to
    # [0, num_frames[b] - 1].
    half = self.delta_width // 2
    index = tf.range(-half, tf.shape(mfcc)[1] + half)
    index = tf.minimum(tf.maximum(index, 0),
                       tf.maximum(num_frames - 1, 0)[:, tf.newaxis])
    deltas = tf.nn.conv1d(tf.gather(mfcc, index, batch_dims=1),
                          self._delta_filters(), stride=1, padding="VALID")
    return tf.concat([mfcc, deltas], axis=-1)

  def _features(self, waveform: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    power = power_spectrogram(
        waveform, lengths, self.analysis_window(), self.frame_step, self.center,
        self.dft, num_bins=self.mel_matrix().shape[1])
    return self.cepstra(self.log_mel(power), self.num_frames(lengths))


@dataclasses.dataclass(frozen=True)
class LogMelConfig(_FeatureConfig):
  """Whisper's log-mel spectrogram (the PhoWhisper teacher's input).

  STFT (fft_length 400 = 25 ms, hop 160 = 10 ms, centred, periodic Hann),
  power, last frame dropped, Slaney mel bank from 0 Hz to sample_rate / 2,
  log10(max(1e-10, mel)), clamped to the example's maximum - 8, then
  (x + 4) / 4.

  Fields:
    fft_length: FFT and window size in samples.
    frame_step: hop in samples.
    num_mel_bins: mel bands (80 for Whisper tiny..large-v2).
    pad_to_seconds: None keeps the length (frames = samples // frame_step);
      30.0 zero-pads or trims the waveform to 30 s first, as Whisper does
      (3000 frames). In a batch, each example is zeroed after its length and
      then padded or trimmed, so every example fills the window and all its
      frames are valid.
    dft: "fft" or "matmul" (see ``power_spectrogram``).
  """
  format: ClassVar[str] = "logmel"
  sample_rate: int = 16000
  fft_length: int = 400
  frame_step: int = 160
  num_mel_bins: int = 80
  pad_to_seconds: Optional[float] = None
  dft: str = "fft"

  def __post_init__(self):
    _check(self.sample_rate > 0, f"sample_rate must be > 0: {self.sample_rate}")
    _check(self.fft_length > 0, f"fft_length must be > 0: {self.fft_length}")
    _check(self.frame_step > 0, f"frame_step must be > 0: {self.frame_step}")
    _check(self.num_mel_bins > 0,
           f"num_mel_bins must be > 0: {self.num_mel_bins}")
    _check(self.pad_to_seconds is None or self.pad_to_seconds > 0,
           f"pad_to_seconds must be None or > 0: {self.pad_to_seconds}")
    _check(self.dft in DFT_METHODS,
           f"unknown dft {self.dft!r}, expected one of {DFT_METHODS}")

  @property
  def num_channels(self) -> int:
    return self.num_mel_bins

  @property
  def padded_samples(self) -> Optional[int]:
    """Samples after padding / trimming, or None without ``pad_to_seconds``."""
    if self.pad_to_seconds is None:
      return None
    return int(round(self.pad_to_seconds * self.sample_rate))

  def num_frames(self, num_samples):
    if self.padded_samples is not None:
      # padded_samples, as an int or a tensor of the shape of num_samples.
      num_samples = 0 * num_samples + self.padded_samples
    return _num_stft_frames(num_samples, self.fft_length, self.frame_step,
                            center=True) - 1

  def _features(self, waveform: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    if self.padded_samples is not None:
      waveform = waveform[:, :self.padded_samples]
      waveform = tf.where(_valid_mask(lengths, tf.shape(waveform)[1]),
                          waveform, 0.0)
      waveform = tf.pad(
          waveform, [[0, 0], [0, self.padded_samples - tf.shape(waveform)[1]]])
      # The static shape (tf.ensure_shape would do, but TFLite lacks it).
      waveform = tf.reshape(waveform, [-1, self.padded_samples])
      lengths = tf.fill(tf.shape(lengths), self.padded_samples)
    # Whisper drops the last STFT frame: for example b that is its frame
    # num_frames(lengths[b]), past its valid frames; the slice drops the
    # batch's last frame.
    power = power_spectrogram(
        waveform, lengths, _centred_hann(self.fft_length, self.fft_length),
        self.frame_step, center=True, dft=self.dft)[:, :-1]
    mel_matrix = librosa.filters.mel(
        sr=self.sample_rate, n_fft=self.fft_length, n_mels=self.num_mel_bins,
        fmin=0.0, fmax=self.sample_rate / 2, htk=False, norm="slaney")
    mel = tf.tensordot(power, mel_matrix.T.astype(np.float32), 1)
    log_mel = tf.math.log(tf.maximum(mel, _WHISPER_LOG_FLOOR)) / np.log(10.0)
    log_max = _max_over_valid_frames(log_mel, self.num_frames(lengths))
    log_mel = tf.maximum(log_mel, log_max - _WHISPER_DYNAMIC_RANGE)
    return (log_mel + 4.0) / 4.0


@dataclasses.dataclass(frozen=True)
class PcenConfig(_FeatureConfig):
  """Per-channel energy normalization (Wang et al. 2017) of mel energies, as
  librosa's ``pcen`` computes it.

  Power spectrogram (as ``PowerConfig``) -> Slaney mel bank ``E [frames,
  bands]`` -> a first-order smoother ``M[t] = (1 - s) M[t - 1] + s E[t]`` per
  band, starting at ``M[0] = E[0]`` (librosa's ``zi`` set to the first frame's
  steady state), ``s`` from ``time_constant`` as librosa derives it -> automatic
  gain control and root compression::

    PCEN[t] = bias^power * ((1 + E[t] / (eps + M[t])^gain / bias)^power - 1)

  The smoother replaces the log of MFCCs and log-mels: each band is divided by
  its own recent level, which takes out a fixed gain or channel and the
  stationary part of noise. Frame ``t`` depends on frames ``0..t`` only.
  Channels: the ``num_mel_bins`` bands. The waveform is taken in [-1, 1].

  Fields:
    frame_length, frame_step, fft_length, center, dft: as in ``PowerConfig``.
    num_mel_bins, lower_edge_hertz, upper_edge_hertz: the mel bank, as in
      ``MfccConfig``.
    time_constant: of the smoother, seconds.
    gain: exponent of the gain control (alpha), in [0, 1].
    bias: added before the root compression (delta), > 0.
    power: the root (r), in (0, 1].
    eps: floor of the smoothed energy, > 0. librosa's 1e-6 is meant for
      energies of integer-scaled audio (``y * 2**31``); on a waveform in
      [-1, 1] it would sit at a -60 dBFS noise floor's mel energy and make a
      quiet recording's output depend on its level, hence 1e-12 here.
  """
  format: ClassVar[str] = "pcen"
  sample_rate: int = 16000
  frame_length: int = 512
  frame_step: int = 160
  fft_length: int = 512
  center: bool = True
  num_mel_bins: int = 40
  lower_edge_hertz: float = 20.0
  upper_edge_hertz: float = 8000.0
  time_constant: float = 0.4
  gain: float = 0.98
  bias: float = 2.0
  power: float = 0.5
  eps: float = 1e-12
  dft: str = "fft"

  def __post_init__(self):
    _check_stft_fields(self)
    _check_mel_edges(self)
    _check(self.num_mel_bins > 0, f"num_mel_bins must be > 0: {self.num_mel_bins}")
    _check(self.time_constant > 0, f"time_constant must be > 0: {self.time_constant}")
    _check(0 <= self.gain <= 1, f"gain must be in [0, 1]: {self.gain}")
    _check(self.bias > 0, f"bias must be > 0: {self.bias}")
    _check(0 < self.power <= 1, f"power must be in (0, 1]: {self.power}")
    _check(self.eps > 0, f"eps must be > 0: {self.eps}")

  @property
  def num_channels(self) -> int:
    return self.num_mel_bins

  def num_frames(self, num_samples):
    return _num_stft_frames(num_samples, self.fft_length, self.frame_step,
                            self.center)

  def smoothing(self) -> float:
    """The smoother's coefficient ``s`` per frame, from ``time_constant`` (librosa's
    formula)."""
    t_frames = self.time_constant * self.sample_rate / self.frame_step
    return float((np.sqrt(1 + 4 * t_frames ** 2) - 1) / (2 * t_frames ** 2))

  def mel_matrix(self) -> np.ndarray:
    """float32 ``[num_mel_bins, bins]``: the Slaney mel bank over the lowest
    ``bins`` DFT bins, up to the highest one it weights."""
    return _slaney_mel_bank(self)

  def smoother_steps(self) -> int:
    """Doubling steps of the smoother's scan: it sums the last ``2^steps`` frames,
    beyond which a frame's weight ``(1 - s)^age`` is under 1e-10."""
    return max(1, int(np.ceil(np.log2(np.log(1e-10) / np.log1p(-self.smoothing())))))

  def pcen(self, mel: tf.Tensor) -> tf.Tensor:
    """``[batch, frames, bands]``: PCEN of mel energies ``[batch, frames, bands]``.

    The smoother ``M[t] = sum over k <= t of (1 - s)^(t - k) x[k]`` (``x[0] =
    E[0]``, ``x[k] = s E[k]``) runs as a scan of ``smoother_steps`` doublings
    (Hillis and Steele): each adds the running sum shifted by ``2^j`` frames,
    weighted ``(1 - s)^(2^j)``. Shifts, products and sums only: TFLite runs it
    as it is, for any number of frames.
    """
    s = self.smoothing()
    frames = tf.shape(mel)[1]
    first = tf.one_hot(0, frames, on_value=1.0, off_value=s)[tf.newaxis, :, tf.newaxis]
    smooth = mel * first
    for step in range(self.smoother_steps()):
      shift = 2 ** step
      earlier = tf.pad(smooth, [[0, 0], [shift, 0], [0, 0]])[:, :frames]
      smooth = smooth + np.float32((1.0 - s) ** shift) * earlier
    agc = tf.exp(-self.gain * tf.math.log(self.eps + smooth))  # (eps + M)^-gain
    compressed = tf.exp(self.power * tf.math.log(1.0 + mel * agc / self.bias)) - 1.0
    return self.bias ** self.power * compressed

  def _features(self, waveform: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    mel_matrix = self.mel_matrix()
    power = power_spectrogram(
        waveform, lengths, _centred_hann(self.frame_length, self.fft_length),
        self.frame_step, self.center, self.dft, num_bins=mel_matrix.shape[1])
    return self.pcen(tf.tensordot(power, mel_matrix.T, 1))


_CONFIG_CLASSES = {
    cls.format: cls
    for cls in (RawConfig, PowerConfig, MfccConfig, LogMelConfig, PcenConfig)
}
FORMATS = tuple(_CONFIG_CLASSES)


def from_dict(d: Dict[str, Any]) -> _FeatureConfig:
  """The config described by ``d`` (as written by ``to_dict``).

  Missing fields take their defaults. Raises ValueError on an unknown format
  or unknown keys, naming them.
  """
  d = dict(d)
  name = d.pop("format", None)
  if name not in _CONFIG_CLASSES:
    raise ValueError(
        f"unknown feature format {name!r}, expected one of {FORMATS}")
  cls = _CONFIG_CLASSES[name]
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(
        f"unknown keys for feature format {name!r}: {unknown}; known keys: "
        f"{sorted(known)}")
  return cls(**d)


def default_config(format_name: str, **overrides: Any) -> _FeatureConfig:
  """The config of ``format_name`` with defaults, except ``overrides``."""
  return from_dict({"format": format_name, **overrides})
