"""On-the-fly waveform augmentation for training, in TensorFlow, with stateless random ops.

``Augmenter(config, sample_rate, babble=..., noise=..., rirs=...)`` maps one
waveform with context around its clip (float32 ``[samples]`` in [-1, 1]) and a
seed (int64 ``[2]``) to one training window (float32 ``[window_samples]``):

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
exactly: a resumed run draws the same views, and guidance computed for a view
(``views_per_example``) matches what the student sees.
"""
import glob
import math
import os
from typing import List, Optional

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


def speed(waveform: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """``waveform [samples]`` played ``factor`` times faster: ``round(samples / factor)``
  samples by linear interpolation."""
  size = tf.shape(waveform)[0]
  length = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) / factor), tf.int32), 1)
  position = tf.range(length, dtype=tf.float32) * factor
  left = tf.minimum(tf.cast(tf.floor(position), tf.int32), size - 1)
  right = tf.minimum(left + 1, size - 1)
  weight = position - tf.cast(left, tf.float32)
  return tf.gather(waveform, left) * (1.0 - weight) + tf.gather(waveform, right) * weight


def crop(waveform: tf.Tensor, start: tf.Tensor, length: int) -> tf.Tensor:
  """``length`` samples of ``waveform [samples]`` from ``start`` (may lie outside;
  zeros there)."""
  size = tf.shape(waveform)[0]
  before = tf.maximum(-start, 0)
  after = tf.maximum(start + length - size, 0)
  padded = tf.pad(waveform, [[before, after]])
  return padded[start + before:start + before + length]


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
  """The first ``len(signal)`` samples of ``signal * kernel`` (both 1-D), by FFT."""
  size = tf.shape(signal)[0]
  total = size + tf.shape(kernel)[0] - 1
  fft_length = tf.cast(2 ** tf.math.ceil(tf.math.log(tf.cast(total, tf.float32)) /
                                        math.log(2.0)), tf.int32)
  spectrum = tf.signal.rfft(signal, [fft_length]) * tf.signal.rfft(kernel, [fft_length])
  return tf.signal.irfft(spectrum, [fft_length])[:size]


def coloured_noise(seed: tf.Tensor, length: int, beta: tf.Tensor) -> tf.Tensor:
  """Unit-power noise ``[length]`` with power spectrum ``1 / f^beta`` (0: white, 1: pink,
  2: brown)."""
  white = tf.random.stateless_normal([length], seed)
  spectrum = tf.signal.rfft(white)
  bins = tf.shape(spectrum)[0]
  f = tf.maximum(tf.range(bins, dtype=tf.float32), 1.0)
  shaped = tf.signal.irfft(spectrum * tf.cast(f ** (-beta / 2.0), tf.complex64), [length])
  return shaped / tf.sqrt(tf.reduce_mean(tf.square(shaped)) + 1e-12)


def bank_segment(bank: tf.Tensor, seed: tf.Tensor, length) -> tf.Tensor:
  """A random ``[length]`` stretch of a 1-D ``bank`` (longer than ``length``)."""
  start = tf.random.stateless_uniform([], seed, 0, tf.shape(bank)[0] - length + 1, tf.int32)
  return bank[start:start + length]


def telephone(waveform: tf.Tensor, sample_rate: int) -> tf.Tensor:
  """The 300-3400 Hz band of ``waveform [samples]`` through 8-bit mu-law (G.711)."""
  size = tf.shape(waveform)[0]
  spectrum = tf.signal.rfft(waveform)
  bins = tf.shape(spectrum)[0]
  hertz = tf.range(bins, dtype=tf.float32) * (sample_rate / tf.cast(size, tf.float32))
  band = tf.logical_and(hertz >= _TELEPHONE_BAND_HZ[0], hertz <= _TELEPHONE_BAND_HZ[1])
  narrow = tf.signal.irfft(tf.where(band, spectrum, 0.0), [size])
  narrow = tf.clip_by_value(narrow, -1.0, 1.0)
  compressed = tf.sign(narrow) * tf.math.log1p(_MU * tf.abs(narrow)) / math.log1p(_MU)
  levels = tf.round((compressed + 1.0) / 2.0 * _MU) / _MU * 2.0 - 1.0
  return tf.sign(levels) * (tf.pow(1.0 + _MU, tf.abs(levels)) - 1.0) / _MU


def _power(x: tf.Tensor) -> tf.Tensor:
  return tf.reduce_mean(tf.square(x))


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

  def __call__(self, waveform: tf.Tensor, seed: tf.Tensor,
               shift_range: Optional[tf.Tensor] = None) -> tf.Tensor:
    """One augmented window.

    Args:
      waveform: float32 ``[samples]``, the clip centred in its context.
      seed: int ``[2]``.
      shift_range: float32 ``[2]``, seconds: the lowest and highest window
        offsets from the centred clip that keep the label; None: any.

    Returns:
      float32 ``[window_samples]`` in [-1, 1].
    """
    c = self.config
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64),
                                                   len(_STEPS) * _DRAWS_PER_STEP)
    step = {name: seeds[i * _DRAWS_PER_STEP:(i + 1) * _DRAWS_PER_STEP]
            for i, name in enumerate(_STEPS)}
    waveform = tf.cast(waveform, tf.float32)

    s = step["speed"]
    factor = tf.where(_chance(s, 0, c.speed_prob), _draw(s, 1, c.speed_min, c.speed_max), 1.0)
    waveform = tf.cond(tf.equal(factor, 1.0), lambda: waveform, lambda: speed(waveform, factor))
    reference = tf.maximum(_power(waveform), _SILENCE_POWER)

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
    if c.max_shift_seconds > 0:
      seconds = _draw(s, 0) * (high - low) + low
      offset = tf.cast(tf.round(seconds * self.sample_rate), tf.int32)
    else:
      offset = tf.constant(0, tf.int32)
    start = (tf.shape(waveform)[0] - self.window) // 2 + offset
    x = crop(waveform, start - self.lead_in, self.window + self.lead_in)

    s = step["reverb"]
    x = tf.cond(_chance(s, 0, c.reverb_prob), lambda: self._reverb(x, s), lambda: x)

    s = step["noise"]
    x = tf.cond(_chance(s, 0, c.noise_prob), lambda: self._add_noise(x, s, reference),
                lambda: x)
    x = x[self.lead_in:]

    s = step["telephone"]
    x = tf.cond(_chance(s, 0, c.telephone_prob),
                lambda: telephone(x, self.sample_rate), lambda: x)

    s = step["gain"]
    gain_db = _draw(s, 0, c.gain_db_min, c.gain_db_max) if c.gain_db_max > c.gain_db_min \
        else tf.constant(c.gain_db_min, tf.float32)
    x = tf.clip_by_value(x * tf.pow(10.0, gain_db / 20.0), -1.0, 1.0)
    return tf.ensure_shape(x, [self.window])

  def _reverb(self, x: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
    c = self.config
    if self.rirs is not None:
      index = tf.random.stateless_uniform([], s[1], 0, tf.shape(self.rirs)[0], tf.int32)
      rir = self.rirs[index]
    else:
      rir = synthetic_rir(s[2], _draw(s, 1, c.rt60_min, c.rt60_max), self.sample_rate,
                          c.rt60_max)
    wet = convolve(x, rir)
    # Keep the dry signal's level: reverberation is not a gain change.
    return wet * tf.sqrt((_power(x) + 1e-12) / (_power(wet) + 1e-12))

  def _add_noise(self, x: tf.Tensor, s: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    c = self.config
    length = self.window + self.lead_in
    kind = tf.random.stateless_categorical(
        tf.constant(self._noise_weights[np.newaxis], tf.float32), 1, s[1])[0, 0]
    branches = [lambda: coloured_noise(s[2], length, _draw(s, 3, 0.0, 2.0))]
    if self.babble is not None:
      branches.append(lambda: self._babble(s[4], length))
    else:
      branches.append(branches[0])
    if self.noise is not None:
      branches.append(lambda: bank_segment(self.noise, s[5], length))
    else:
      branches.append(branches[0])
    noise = tf.switch_case(tf.cast(kind, tf.int32), branches)
    snr_db = _draw(s, 6, c.snr_db_min, c.snr_db_max)
    in_window = tf.maximum(_power(noise[self.lead_in:]), 1e-12)  # the SNR of the window
    scale = tf.sqrt(reference / (in_window * tf.pow(10.0, snr_db / 10.0)))
    return x + scale * noise

  def _babble(self, seed: tf.Tensor, length: int) -> tf.Tensor:
    talkers = max(self.config.babble_talkers, 2)
    seeds = tf.random.experimental.stateless_split(seed, talkers + 1)
    count = tf.random.stateless_uniform([], seeds[0], 2, talkers + 1, tf.int32)
    parts = [bank_segment(self.babble, seeds[i + 1], length) * tf.cast(i < count, tf.float32)
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
