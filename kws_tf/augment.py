"""On-the-fly waveform augmentation for training, in TensorFlow, with stateless random ops.

``Augmenter(config, sample_rate, window_seconds, babble=..., noise=..., rirs=...)``
maps a waveform with context around its clip (float32 ``[samples]`` in [-1, 1])
and a seed (int64 ``[2]``) to one training window (float32 ``[window_samples]``),
in two phases: ``draw`` makes the random choices of one example (cheap, per
example in tf.data), ``apply`` does the signal processing of a batch:

  speed      resampling by linear interpolation (tempo and pitch change
             together, as Kaldi's speed perturbation), factor in
             ``[speed_min, speed_max]``
  shift      the window's start moves by up to ``max_shift_seconds`` from the
             centred clip, within the record's ``shift_range`` (the offsets at
             which its label stays true)
  reverb     convolution with a room impulse response: one of ``rirs`` or a
             synthetic one (direct path, then exponentially decaying Gaussian
             noise with RT60 in ``[rt60_min, rt60_max]`` seconds)
  noise      at an SNR in ``[snr_db_min, snr_db_max]`` dB against the speech
             power of the whole context: coloured noise (power spectrum
             ``1 / f^beta``, beta in [0, 2]: white to brown), babble (2 to
             ``babble_talkers`` segments of other utterances summed), or a
             segment of a noise recording
  telephone  a 300-3400 Hz band and 8-bit mu-law companding
  gain       ``[gain_db_min, gain_db_max]`` dB, then clipping to [-1, 1]

Each step runs with its probability. The window is a function of the
waveform, the seed and the shift range only, so a seed reproduces a view
exactly: a resumed run draws the same views, and the teacher's guidance for a
view (``kws-create-guidance --views``, seeds from ``view_seed``) matches what
the student sees.
"""
import glob
import math
import os
from typing import Dict, List, Optional

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kws_tf import audio
from kws_tf import config as config_lib

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

# Steps, in the order they are applied; each draws from its own sub-seed.
_STEPS = ("speed", "shift", "reverb", "noise", "telephone", "gain")
_DRAWS_PER_STEP = 8
_REVERB_LEAD_IN_SECONDS = 0.2  # speech before the window whose reverberation reaches it
_DIRECT_DELAY_SECONDS = 0.0025  # direct path to the first reflection
_TELEPHONE_BAND_HZ = (300.0, 3400.0)
_MU = 255.0
_SILENCE_POWER = 1e-6  # reference power (-60 dBFS) of a context without speech


def _draw(seed: tf.Tensor, index: int, low=0.0, high=1.0, shape=()) -> tf.Tensor:
  """Uniform float32 in [low, high) from the ``index``-th sub-seed of ``seed``."""
  return tf.random.stateless_uniform(shape, seed[index], low, high, tf.float32)


def _chance(seed: tf.Tensor, index: int, probability: float) -> tf.Tensor:
  return _draw(seed, index) < probability


def synthetic_rir(seed: tf.Tensor, rt60: tf.Tensor, sample_rate: int,
                  max_seconds: float) -> tf.Tensor:
  """A room impulse response ``[round(max_seconds * sample_rate)]``: a unit direct
  path, then Gaussian noise whose energy decays by 60 dB in ``rt60`` seconds."""
  length = int(round(max_seconds * sample_rate))
  delay = int(round(_DIRECT_DELAY_SECONDS * sample_rate))
  t = tf.range(length, dtype=tf.float32) / sample_rate
  decay = tf.exp(-3.0 * math.log(10.0) * t / rt60)  # amplitude: -60 dB of energy at rt60
  tail = tf.random.stateless_normal([length], seed) * decay
  tail = tf.where(tf.range(length) >= delay, tail, 0.0)
  # The reverberant energy scales with RT60 against the direct path (as in a
  # room of fixed size): 0.1 of it at RT60 = 0.1 s.
  tail = tail * tf.sqrt(rt60 / (tf.reduce_sum(tf.square(tail)) + 1e-12))
  return tf.tensor_scatter_nd_update(tail, [[0]], [1.0])


def convolve(signal: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """The first ``signal`` samples of ``signal * kernel`` along the last axis, by FFT
  (``[..., samples]`` and ``[..., taps]``, broadcast over the leading axes)."""
  size = tf.shape(signal)[-1]
  total = size + tf.shape(kernel)[-1] - 1
  fft_length = tf.cast(2 ** tf.math.ceil(tf.math.log(tf.cast(total, tf.float32)) /
                                        math.log(2.0)), tf.int32)
  def padded(x):  # rfft pads only inputs of a static shape
    pad = tf.concat([tf.zeros([tf.rank(x) - 1, 2], tf.int32),
                     [[0, fft_length - tf.shape(x)[-1]]]], 0)
    return tf.pad(x, pad)

  spectrum = tf.signal.rfft(padded(signal)) * tf.signal.rfft(padded(kernel))
  return tf.signal.irfft(spectrum, [fft_length])[..., :size]


def shape_noise(white: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
  """``white [..., samples]`` shaped to the power spectrum ``1 / f^beta`` (``beta``
  of the leading shape; 0: white, 1: pink, 2: brown), scaled to unit power."""
  length = tf.shape(white)[-1]
  spectrum = tf.signal.rfft(white)
  f = tf.maximum(tf.range(tf.shape(spectrum)[-1], dtype=tf.float32), 1.0)
  gain = f ** (-tf.expand_dims(tf.cast(beta, tf.float32), -1) / 2.0)
  shaped = tf.signal.irfft(spectrum * tf.cast(gain, tf.complex64), [length])
  return shaped / tf.sqrt(tf.reduce_mean(tf.square(shaped), axis=-1, keepdims=True) + 1e-12)


def bank_segment(bank: tf.Tensor, seed: tf.Tensor, length) -> tf.Tensor:
  """A random ``[length]`` stretch of a 1-D ``bank`` (longer than ``length``)."""
  start = tf.random.stateless_uniform([], seed, 0, tf.shape(bank)[0] - length + 1, tf.int32)
  return bank[start:start + length]


def telephone(waveform: tf.Tensor, sample_rate: int) -> tf.Tensor:
  """The 300-3400 Hz band of ``waveform [..., samples]`` through 8-bit mu-law (G.711)."""
  size = tf.shape(waveform)[-1]
  spectrum = tf.signal.rfft(waveform)
  bins = tf.shape(spectrum)[-1]
  hertz = tf.range(bins, dtype=tf.float32) * (sample_rate / tf.cast(size, tf.float32))
  band = tf.logical_and(hertz >= _TELEPHONE_BAND_HZ[0], hertz <= _TELEPHONE_BAND_HZ[1])
  narrow = tf.signal.irfft(tf.where(band, spectrum, 0.0), [size])
  narrow = tf.clip_by_value(narrow, -1.0, 1.0)
  compressed = tf.sign(narrow) * tf.math.log1p(_MU * tf.abs(narrow)) / math.log1p(_MU)
  levels = tf.round((compressed + 1.0) / 2.0 * _MU) / _MU * 2.0 - 1.0
  return tf.sign(levels) * (tf.pow(1.0 + _MU, tf.abs(levels)) - 1.0) / _MU


def view_seed(example_id: tf.Tensor, view: tf.Tensor, seed: int) -> tf.Tensor:
  """int64 ``[2]``: the augmentation seed of view ``view`` of the example named
  ``example_id`` (a string), for guidance of several views (``--views``); the
  same in the guidance job and in the student's pipeline."""
  return tf.stack([tf.strings.to_hash_bucket_fast(example_id, 2 ** 62),
                   tf.cast(seed, tf.int64) * 4096 + tf.cast(view, tf.int64)])


def _on_rows(chosen: tf.Tensor, x: tf.Tensor, fn) -> tf.Tensor:
  """``x [batch, ...]`` with the rows where ``chosen [batch]`` is True replaced by
  ``fn(those rows, their indices)``; only those rows are computed."""
  rows = tf.where(chosen)[:, 0]
  return tf.tensor_scatter_nd_update(x, rows[:, None], fn(tf.gather(x, rows), rows))


def _power(x: tf.Tensor, keep: bool = False) -> tf.Tensor:
  """Mean square over the last axis."""
  return tf.reduce_mean(tf.square(x), axis=-1, keepdims=keep)


class Augmenter:
  """Seeded augmentation of a context waveform into a training window; see the module.

  Args:
    config: the recipe's ``augment`` section.
    sample_rate: Hz.
    window_seconds: the window (clip) the model takes, seconds.
    babble: float32 ``[samples]``, other utterances end to end (at least
      ``window + lead-in`` long), or None: no babble.
    noise: float32 ``[samples]``, noise recordings end to end, or None.
    rirs: float32 ``[count, taps]`` impulse responses (direct path first), or
      None: synthetic ones.
  """

  def __init__(self, config: config_lib.AugmentConfig, sample_rate: int, window_seconds: float,
               babble: Optional[np.ndarray] = None, noise: Optional[np.ndarray] = None,
               rirs: Optional[np.ndarray] = None):
    self.config = config
    self.sample_rate = sample_rate
    self.window = int(round(window_seconds * sample_rate))
    self.lead_in = int(round(_REVERB_LEAD_IN_SECONDS * sample_rate))
    span = self.window + self.lead_in
    for name, bank in (("babble", babble), ("noise", noise)):
      if bank is not None and len(bank) <= span:
        raise ValueError(f"the {name} bank holds {len(bank)} samples; it needs more than "
                         f"{span} (one window and its reverberation lead-in)")
    self.babble = None if babble is None else tf.constant(babble, tf.float32)
    self.noise = None if noise is None else tf.constant(noise, tf.float32)
    self.rirs = None if rirs is None else tf.constant(rirs, tf.float32)
    weights = [config.coloured_noise_weight,
               config.babble_weight if babble is not None else 0.0,
               config.recorded_noise_weight if noise is not None else 0.0]
    if sum(weights) <= 0:
      weights = [1.0, 0.0, 0.0]
    self._noise_weights = np.log(np.maximum(np.asarray(weights, np.float64), 1e-30))

  @property
  def span(self) -> int:
    """Samples of the augmented stretch: the reverberation lead-in and the window."""
    return self.lead_in + self.window

  def draw(self, seed: tf.Tensor, shift_range: Optional[tf.Tensor],
           samples: int) -> Dict[str, tf.Tensor]:
    """The random choices of one example's view (cheap, per example).

    Args:
      seed: int ``[2]``.
      shift_range: float32 ``[2]``, seconds: the lowest and highest window
        offsets from the centred clip that keep the label; None: any.
      samples: length of the context waveforms.

    Returns:
      a dict of tensors (scalars, the noise ``[span]`` and the impulse
      response ``[taps]``) that ``apply`` takes, batched.
    """
    c = self.config
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64),
                                                   len(_STEPS) * _DRAWS_PER_STEP)
    step = {name: seeds[i * _DRAWS_PER_STEP:(i + 1) * _DRAWS_PER_STEP]
            for i, name in enumerate(_STEPS)}

    s = step["speed"]
    factor = tf.where(_chance(s, 0, c.speed_prob), _draw(s, 1, c.speed_min, c.speed_max), 1.0)

    s = step["shift"]
    low, high = -float(c.max_shift_seconds), float(c.max_shift_seconds)
    if shift_range is not None:
      # The audio is stretched by 1 / factor about the clip's centre while the
      # window keeps its length: a keyword must stay inside the window, a
      # negative's window must stay between its keywords. Either way, the
      # stricter bound of the two.
      half = self.window / self.sample_rate / 2
      low = tf.maximum(low, tf.maximum((shift_range[0] + half) / factor - half,
                                        (shift_range[0] - half) / factor + half))
      high = tf.minimum(high, tf.minimum((shift_range[1] - half) / factor + half,
                                         (shift_range[1] + half) / factor - half))
      low, high = tf.minimum(low, 0.0), tf.maximum(high, 0.0)
    offset = tf.constant(0, tf.int32)
    if c.max_shift_seconds > 0:
      offset = tf.cast(tf.round((_draw(s, 0) * (high - low) + low) * self.sample_rate),
                       tf.int32)
    # The first sample of the stretch, in samples of the sped-up waveform.
    stretched = tf.cast(tf.round(tf.cast(samples, tf.float32) / factor), tf.int32)
    start = (stretched - self.window) // 2 + offset - self.lead_in

    s = step["reverb"]
    if c.reverb_prob <= 0:
      rir = tf.zeros([1])
    elif self.rirs is not None:
      rir = self.rirs[tf.random.stateless_uniform([], s[1], 0, tf.shape(self.rirs)[0],
                                                  tf.int32)]
    else:
      rir = synthetic_rir(s[2], _draw(s, 1, c.rt60_min, c.rt60_max), self.sample_rate,
                          c.rt60_max)

    s = step["noise"]
    kind = tf.constant(0) if c.noise_prob <= 0 else tf.cast(tf.random.stateless_categorical(
        tf.constant(self._noise_weights[np.newaxis], tf.float32), 1, s[1])[0, 0], tf.int32)
    noise = tf.zeros([1]) if c.noise_prob <= 0 else tf.switch_case(kind, [
        lambda: tf.random.stateless_normal([self.span], s[2]),
        (lambda: self._babble(s[4])) if self.babble is not None else
        (lambda: tf.zeros([self.span])),
        (lambda: bank_segment(self.noise, s[5], self.span)) if self.noise is not None else
        (lambda: tf.zeros([self.span]))])

    gain_db = tf.constant(float(c.gain_db_min))
    if c.gain_db_max > c.gain_db_min:
      gain_db = _draw(step["gain"], 0, c.gain_db_min, c.gain_db_max)
    return {"factor": factor, "start": start, "reverb": _chance(step["reverb"], 0, c.reverb_prob),
            "rir": rir, "add_noise": _chance(s, 0, c.noise_prob), "noise_kind": kind,
            "noise": noise, "beta": _draw(s, 3, 0.0, 2.0),
            "snr_db": _draw(s, 6, c.snr_db_min, c.snr_db_max),
            "telephone": _chance(step["telephone"], 0, c.telephone_prob), "gain_db": gain_db}

  def apply(self, waveforms: tf.Tensor, choices: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The windows of a batch (the signal processing, vectorised).

    Args:
      waveforms: float32 ``[batch, samples]``, clips centred in their context.
      choices: ``draw``'s dicts, batched (every tensor with a leading batch axis).

    Returns:
      float32 ``[batch, window_samples]`` in [-1, 1].
    """
    c = self.config
    waveforms = tf.cast(waveforms, tf.float32)
    samples = tf.shape(waveforms)[1]
    factor = choices["factor"]
    # Speed and crop in one: stretch sample j is the waveform at (start + j) * factor,
    # linearly interpolated; zeros outside the waveform.
    # float64: a float32 position near 30000 samples is only good to 0.002 of a sample.
    position = (tf.cast(choices["start"][:, None] + tf.range(self.span)[None], tf.float64)
                * tf.cast(factor, tf.float64)[:, None])
    left = tf.cast(tf.floor(position), tf.int32)
    weight = tf.cast(position - tf.floor(position), tf.float32)
    flat = tf.reshape(waveforms, [-1])
    row_start = tf.range(tf.shape(waveforms)[0])[:, None] * samples

    def take(index):
      inside = tf.logical_and(index >= 0, index < samples)
      return tf.where(inside, tf.gather(flat, row_start + tf.clip_by_value(index, 0, samples - 1)),
                      0.0)

    x = take(left) * (1.0 - weight) + take(left + 1) * weight
    reference = tf.maximum(tf.reduce_mean(tf.square(waveforms), axis=1), _SILENCE_POWER)

    if c.reverb_prob > 0:
      def reverberate(dry, rows):
        wet = convolve(dry, tf.gather(choices["rir"], rows))
        return wet * tf.sqrt((_power(dry, keep=True) + 1e-12) / (_power(wet, keep=True) + 1e-12))
      x = _on_rows(choices["reverb"], x, reverberate)

    if c.noise_prob > 0:
      noise = _on_rows(tf.logical_and(choices["add_noise"], tf.equal(choices["noise_kind"], 0)),
                       choices["noise"],
                       lambda white, rows: shape_noise(white, tf.gather(choices["beta"], rows)))
      in_window = tf.maximum(tf.reduce_mean(tf.square(noise[:, self.lead_in:]), axis=1), 1e-12)
      scale = tf.sqrt(reference / (in_window * tf.pow(10.0, choices["snr_db"] / 10.0)))
      x = tf.where(choices["add_noise"][:, None], x + scale[:, None] * noise, x)
    x = x[:, self.lead_in:]

    if c.telephone_prob > 0:
      x = _on_rows(choices["telephone"], x, lambda rows_x, _: telephone(rows_x, self.sample_rate))
    x = x * tf.pow(10.0, choices["gain_db"] / 20.0)[:, None]
    return tf.ensure_shape(tf.clip_by_value(x, -1.0, 1.0), [None, self.window])

  def __call__(self, waveform: tf.Tensor, seed: tf.Tensor,
               shift_range: Optional[tf.Tensor] = None) -> tf.Tensor:
    """One augmented window: ``apply`` of ``draw`` for a single example.

    Args:
      waveform: float32 ``[samples]``, the clip centred in its context.
      seed: int ``[2]``.
      shift_range: float32 ``[2]`` seconds (see ``draw``), or None.

    Returns:
      float32 ``[window_samples]`` in [-1, 1].
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    samples = waveform.shape[0] if waveform.shape[0] is not None else tf.shape(waveform)[0]
    choices = self.draw(seed, shift_range, samples)
    return self.apply(waveform[tf.newaxis],
                      {k: v[tf.newaxis] for k, v in choices.items()})[0]

  def _babble(self, seed: tf.Tensor) -> tf.Tensor:
    talkers = max(self.config.babble_talkers, 2)
    seeds = tf.random.experimental.stateless_split(seed, talkers + 1)
    count = tf.random.stateless_uniform([], seeds[0], 2, talkers + 1, tf.int32)
    parts = [bank_segment(self.babble, seeds[i + 1], self.span) * tf.cast(i < count, tf.float32)
             for i in range(talkers)]
    return tf.add_n(parts)


def _audio_files(folder: str) -> List[str]:
  paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                 if os.path.splitext(p)[1].lower() in AUDIO_EXTENSIONS)
  if not paths:
    raise ValueError(f"{folder} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
  return paths


def load_noise_bank(folder: str, sample_rate: int) -> np.ndarray:
  """float32 ``[samples]``: every audio file under ``folder`` (sorted, read
  recursively, downmixed and resampled to ``sample_rate``), each scaled to unit
  power, end to end. An unreadable file raises ``audio.AudioError`` naming it."""
  parts = []
  for path in _audio_files(folder):
    samples = audio.read_audio(path, sample_rate, min_seconds=None, max_seconds=None)
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    if power > 0:
      parts.append((samples / np.sqrt(power)).astype(np.float32))
  if not parts:
    raise ValueError(f"every audio file in {folder} is silent")
  return np.concatenate(parts)


def load_rirs(folder: str, sample_rate: int, max_seconds: float) -> np.ndarray:
  """float32 ``[count, taps]``: the room impulse responses under ``folder``, each
  resampled, started at its peak (the direct path, scaled to 1) and cut or
  zero-padded to ``max_seconds``."""
  taps = int(round(max_seconds * sample_rate))
  rirs = []
  for path in _audio_files(folder):
    rir = audio.read_audio(path, sample_rate, min_seconds=None, max_seconds=None)
    peak = int(np.argmax(np.abs(rir)))
    if rir[peak] == 0:
      raise ValueError(f"{path}: the impulse response is silent")
    rir = rir[peak:peak + taps] / rir[peak]
    rirs.append(np.pad(rir, (0, taps - len(rir))).astype(np.float32))
  return np.stack(rirs)
