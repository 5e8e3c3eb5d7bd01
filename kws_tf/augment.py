"""On-the-fly waveform augmentation for training, in TensorFlow, with stateless random ops.

``Augmenter(config, sample_rate, window_seconds, babble=..., noise=..., rirs=...)``
maps a waveform with context around its clip (float32 ``[samples]`` in [-1, 1])
and a seed (int64 ``[2]``) to one training window (float32 ``[window_samples]``),
in two phases, both on whole batches: ``draw`` turns each row's seed into its
random choices (``uniforms``: hashes, no per-example ops), ``apply`` does the
signal processing:

  speed      resampling by linear interpolation (tempo and pitch change
             together, as Kaldi's speed perturbation), by one of
             ``SPEED_VALUES`` factors evenly spaced in ``[speed_min, speed_max]``
  shift      the window's start moves by up to ``max_shift_seconds`` from the
             centred clip moved by ``shift_bias_seconds``, within the record's
             ``shift_range`` (the offsets at which its label stays true)
  reverb     convolution with a room impulse response: one of ``rirs`` or of
             ``SYNTHETIC_ROOMS`` synthetic ones (direct path, then exponentially
             decaying Gaussian noise with RT60 in ``[rt60_min, rt60_max]`` seconds)
  noise      at an SNR in ``[snr_db_min, snr_db_max]`` dB against the speech
             power of the whole context: a stretch of coloured noise (power
             spectrum ``1 / f^beta``, beta in ``COLOURED_BETAS``: white to
             brown), of babble (2 to ``babble_talkers`` other utterances
             summed) or of the noise recordings; every kind is precomputed
             once per ``Augmenter`` as banks, so a view only cuts a stretch
  telephone  a 300-3400 Hz band and 8-bit mu-law companding
  gain       ``[gain_db_min, gain_db_max]`` dB, then clipping to [-1, 1]

``draw`` also chooses each view's vocal tract length perturbation (one of
``VTLP_VALUES`` factors evenly spaced in ``[vtlp_min, vtlp_max]``), which the
input pipeline applies to the window's features (``kws_tf.warp``), not here.

A view that is not sped up may instead change its tempo alone: ``apply``
resamples it by a factor in ``[tempo_min, tempo_max]`` (one of ``TEMPO_VALUES``)
as speed does, and its ``warp`` is the frequency warp by the inverse factor,
which moves the spectrum back where it was: faster or slower speech of the
same voice (pitch aside, which 13 MFCCs hardly keep).

Each step runs with its probability. The window is a function of the
waveform, the seed and the shift range only, so a seed reproduces a view
exactly: a resumed run draws the same views, and the teacher's guidance for a
view (``kws-create-guidance --views``, seeds from ``view_seed``) matches what
the student sees.
"""
import dataclasses
import glob
import math
import os
from typing import Dict, List, Optional

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import scipy.fft
import tensorflow as tf

from kws_tf import audio
from kws_tf import config as config_lib

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

# Version of the drawing and processing below: guidance views record it, and
# views of another version do not match what a student sees.
VERSION = 2
SYNTHETIC_ROOMS = 128  # synthetic impulse responses an Augmenter draws once
SPEED_VALUES = 7  # speed factors, evenly spaced from speed_min to speed_max
VTLP_VALUES = 9  # warp factors, evenly spaced from vtlp_min to vtlp_max
TEMPO_VALUES = 7  # tempo factors, evenly spaced from tempo_min to tempo_max
NOISE_BLOCK = 160  # samples: noise stretches start on multiples of this in their bank
COLOURED_BETAS = (0.0, 0.5, 1.0, 1.5, 2.0)  # spectral slopes of the coloured-noise banks
# The uniform draws of one view, by column.
_COLUMNS = ("speed_on", "speed", "shift", "reverb_on", "room", "noise_on", "noise_kind",
            "noise_bank", "noise_at", "snr", "telephone_on", "gain", "vtlp_on", "vtlp",
            "tempo_on", "tempo")
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, SplitMix64's increment
_BANK_SEEDS = ((7, 1), (7, 2), (7, 3), (7, 4))  # RT60s, room tails, white noise, babble offsets
_COLOURED_SECONDS = 20.0  # each coloured-noise bank
_COLOURED_FLOOR_HZ = 20.0  # coloured banks: below this, the spectrum stays at its 20 Hz level
_REVERB_LEAD_IN_SECONDS = 0.2  # speech before the window whose reverberation reaches it
_DIRECT_DELAY_SECONDS = 0.0025  # direct path to the first reflection
_TELEPHONE_BAND_HZ = (300.0, 3400.0)
_MU = 255.0
SILENCE_POWER = 1e-6  # reference power (-60 dBFS) of a context without speech


def uniforms(seeds: tf.Tensor, count: int) -> tf.Tensor:
  """float32 ``[batch, count]`` in [0, 1): stateless uniform draws, row b a
  function of ``seeds[b]`` (int ``[batch, 2]``) only, whatever else is in the
  batch. Each value is a SplitMix64 hash of the row's seed and its column."""
  seeds = tf.bitcast(tf.cast(seeds, tf.int64), tf.uint64)
  golden = tf.constant(_GOLDEN, tf.uint64)
  key = _mix(_mix(seeds[:, 0]) + seeds[:, 1] * golden)
  column = tf.bitcast(tf.range(1, count + 1, dtype=tf.int64), tf.uint64)
  bits = tf.bitwise.right_shift(_mix(key[:, None] + column[None] * golden),
                                tf.constant(40, tf.uint64))
  return tf.cast(bits, tf.float32) / float(2 ** 24)


def _mix(z: tf.Tensor) -> tf.Tensor:
  """SplitMix64's finaliser on uint64 (a bijection that spreads every input bit)."""
  for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(shift, tf.uint64)))
    z = z * tf.constant(multiplier, tf.uint64)
  return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(31, tf.uint64)))


def synthetic_rir(seed: tf.Tensor, rt60: tf.Tensor, sample_rate: int,
                  max_seconds: float) -> tf.Tensor:
  """Room impulse responses ``rt60.shape + [round(max_seconds * sample_rate)]``:
  a unit direct path, then Gaussian noise whose energy decays by 60 dB in
  ``rt60`` seconds (float32, any shape)."""
  rt60 = tf.convert_to_tensor(rt60, tf.float32)[..., tf.newaxis]
  length = int(round(max_seconds * sample_rate))
  delay = int(round(_DIRECT_DELAY_SECONDS * sample_rate))
  t = tf.range(length, dtype=tf.float32) / sample_rate
  decay = tf.exp(-3.0 * math.log(10.0) * t / rt60)  # amplitude: -60 dB of energy at rt60
  shape = tf.concat([tf.shape(rt60)[:-1], [length]], 0)
  tail = tf.random.stateless_normal(shape, seed) * decay
  tail = tf.where(tf.range(length) >= delay, tail, 0.0)
  # The reverberant energy scales with RT60 against the direct path (as in a
  # room of fixed size): 0.1 of it at RT60 = 0.1 s.
  tail = tail * tf.sqrt(rt60 / (tf.reduce_sum(tf.square(tail), -1, keepdims=True) + 1e-12))
  return tf.concat([tf.ones_like(tail[..., :1]), tail[..., 1:]], -1)


def shape_noise(white: tf.Tensor, beta: tf.Tensor, floor_bin: float = 1.0) -> tf.Tensor:
  """``white [..., samples]`` shaped to the power spectrum ``1 / f^beta`` (``beta``
  of the leading shape; 0: white, 1: pink, 2: brown), flat below FFT bin
  ``floor_bin``, scaled to unit power."""
  length = tf.shape(white)[-1]
  spectrum = tf.signal.rfft(white)
  f = tf.maximum(tf.range(tf.shape(spectrum)[-1], dtype=tf.float32), floor_bin)
  gain = f ** (-tf.expand_dims(tf.cast(beta, tf.float32), -1) / 2.0)
  shaped = tf.signal.irfft(spectrum * tf.cast(gain, tf.complex64), [length])
  return shaped / tf.sqrt(tf.reduce_mean(tf.square(shaped), axis=-1, keepdims=True) + 1e-12)


def fft_length(samples: int) -> int:
  """The smallest ``2^a 3^b 5^c`` of at least ``samples``: a length at which a
  real FFT of ``samples`` zero-padded samples is fast (e.g. 30,720 for 30,399,
  where the next power of two is 32,768); scipy's ``next_fast_len``."""
  return int(scipy.fft.next_fast_len(samples, real=True))


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
  return tf.gather(_MU_LAW_LEVELS, tf.cast(tf.round((compressed + 1.0) / 2.0 * _MU), tf.int32))


def _mu_law_levels() -> np.ndarray:
  """float32 ``[256]``: the waveform value of each 8-bit mu-law code (code k is
  the compressed level ``2 k / 255 - 1``). A numpy array: a tensor made at import
  would start TensorFlow's runtime before a program configures its devices."""
  levels = np.arange(int(_MU) + 1) / _MU * 2.0 - 1.0
  return (np.sign(levels) * (np.power(1.0 + _MU, np.abs(levels)) - 1.0) / _MU).astype(np.float32)


_MU_LAW_LEVELS = _mu_law_levels()


def view_seed(example_id: tf.Tensor, view: tf.Tensor, seed: int) -> tf.Tensor:
  """int64 ``example_id.shape + [2]``: the augmentation seeds of view ``view`` of
  the examples named ``example_id`` (strings), for guidance of several views
  (``--views``); the same in the guidance job and in the student's pipeline."""
  view = tf.broadcast_to(tf.cast(view, tf.int64), tf.shape(example_id))
  return tf.stack([tf.strings.to_hash_bucket_fast(example_id, 2 ** 62),
                   tf.cast(seed, tf.int64) * 4096 + view], axis=-1)


def view_fields(config: config_lib.AugmentConfig) -> Dict[str, object]:
  """What makes a view: the augment section's fields (without ``enabled``, the
  student's own feature warp ``vtlp_*``, and ``tempo_*`` while tempo is off or
  not in the views, and the student's ``fresh_view_prob``) and ``version``, the
  version of this module's drawing and processing."""
  tempo_off = config.tempo_prob == 0 or not config.tempo_in_views
  # tempo_in_views itself is not listed: views with tempo_* fields have tempo.
  fields = {key: value for key, value in dataclasses.asdict(config).items()
            if key not in ("enabled", "tempo_in_views", "fresh_view_prob")
            and not key.startswith("vtlp_")
            and not (key.startswith("tempo_") and tempo_off)}
  fields["version"] = VERSION
  return fields


def _grid(low: float, high: float, values: int) -> List[float]:
  """``values`` factors evenly spaced in ``[low, high]`` (one when they are equal)."""
  return [float(f) for f in np.linspace(low, high, values if high > low else 1)]


def _pick(u: tf.Tensor, count: int) -> tf.Tensor:
  """int32 index in ``[0, count)`` of uniform draws ``u`` in [0, 1)."""
  return tf.minimum(tf.cast(u * max(count, 1), tf.int32), max(count, 1) - 1)


def on_rows(chosen: tf.Tensor, x: tf.Tensor, fn) -> tf.Tensor:
  """``x [batch, ...]`` with the rows where ``chosen [batch]`` is True replaced by
  ``fn(those rows, their indices)``; only those rows are computed."""
  rows = tf.where(chosen)[:, 0]
  return tf.tensor_scatter_nd_update(x, rows[:, None], fn(tf.gather(x, rows), rows))


def _power(x: tf.Tensor, keep: bool = False) -> tf.Tensor:
  """Mean square over the last axis."""
  return tf.reduce_mean(tf.square(x), axis=-1, keepdims=keep)


class Augmenter:
  """Seeded augmentation of context waveforms into training windows; see the module.

  Args:
    config: the recipe's ``augment`` section.
    sample_rate: Hz.
    window_seconds: the window (clip) the model takes, seconds.
    babble: float32 ``[samples]``, other utterances end to end (at least
      ``window + lead-in`` long), or None: no babble.
    noise: float32 ``[samples]``, noise recordings end to end, or None.
    rirs: float32 ``[count, taps]`` impulse responses (direct path first), or
      None: ``SYNTHETIC_ROOMS`` synthetic ones, RT60 uniform in the config's range.
  """

  def __init__(self, config: config_lib.AugmentConfig, sample_rate: int, window_seconds: float,
               babble: Optional[np.ndarray] = None, noise: Optional[np.ndarray] = None,
               rirs: Optional[np.ndarray] = None):
    self.config = config
    self.sample_rate = sample_rate
    self.window = int(round(window_seconds * sample_rate))
    self.lead_in = int(round(_REVERB_LEAD_IN_SECONDS * sample_rate))
    span = self.window + self.lead_in
    self._speeds = _grid(config.speed_min, config.speed_max, SPEED_VALUES)
    self._tempos = (_grid(config.tempo_min, config.tempo_max, TEMPO_VALUES)
                    if config.tempo_prob > 0 else [])
    self._vtlp = (_grid(config.vtlp_min, config.vtlp_max, VTLP_VALUES)
                  if config.vtlp_prob > 0 else [])
    # The frequency warps of the features: VTLP's, then each tempo's inverse.
    self.warp_factors = self._vtlp + [1.0 / f for f in self._tempos]
    # Resampling factors (``draw``'s ``speed`` indexes them): the speeds, then the tempos.
    self.resampling_factors = self._speeds + self._tempos
    self._lengths = [int(round(span * f)) for f in self.resampling_factors]
    for name, bank in (("babble", babble), ("noise", noise)):
      if bank is not None and len(bank) <= span:
        raise ValueError(f"the {name} bank holds {len(bank)} samples; it needs more than "
                         f"{span} (one window and its reverberation lead-in)")
    taps = 0
    if rirs is None and config.reverb_prob > 0:
      rt60 = tf.random.stateless_uniform([SYNTHETIC_ROOMS], _BANK_SEEDS[0], config.rt60_min,
                                         config.rt60_max)
      rirs = synthetic_rir(_BANK_SEEDS[1], rt60, sample_rate, config.rt60_max).numpy()
    self.rirs = None
    if rirs is not None:
      self.rirs = tf.constant(rirs, tf.float32)
      taps = int(rirs.shape[1])
    # Reverberation is a product of spectra of this length (no circular wrap).
    self._fft_length = fft_length(span + max(taps, 1) - 1)
    self.room_spectra = None
    if self.rirs is not None and config.reverb_prob > 0:
      self.room_spectra = tf.signal.rfft(
          tf.pad(self.rirs, [[0, 0], [0, self._fft_length - taps]]))
    self._noise_banks(config, sample_rate, babble, noise)

  def _noise_banks(self, config: config_lib.AugmentConfig, sample_rate: int,
                   babble: Optional[np.ndarray], noise: Optional[np.ndarray]) -> None:
    """The noise a view adds is a stretch of one bank, all banks end to end in
    ``self.banks``: coloured noise (one bank per ``COLOURED_BETAS``, unit power),
    babble (one bank per talker count 2..``babble_talkers``, each a sum of
    that many stretches of ``babble`` at fixed random offsets) and ``noise``.
    Bank kinds are chosen with the config's weights (kinds without a bank get 0)."""
    kinds = [[], [], []]  # coloured, babble, recorded: float32 arrays
    weights = np.array([config.coloured_noise_weight,
                        config.babble_weight if babble is not None else 0.0,
                        config.recorded_noise_weight if noise is not None else 0.0])
    if weights.sum() <= 0:
      weights = np.array([1.0, 0.0, 0.0])
    if config.noise_prob > 0 and weights[0] > 0:
      length = int(_COLOURED_SECONDS * sample_rate)
      white = tf.random.stateless_normal([length], _BANK_SEEDS[2])
      floor_bin = _COLOURED_FLOOR_HZ * length / sample_rate
      kinds[0] = [shape_noise(white, beta, floor_bin).numpy() for beta in COLOURED_BETAS]
    if config.noise_prob > 0 and weights[1] > 0:
      talkers = max(config.babble_talkers, 2)
      length = max(len(babble) // (talkers - 1), self.span + 1)
      offsets = np.random.default_rng(list(_BANK_SEEDS[3])).integers(
          0, len(babble), size=(talkers + 1, talkers))
      for count in range(2, talkers + 1):
        index = (np.arange(length)[None] + offsets[count, :count, None]) % len(babble)
        kinds[1].append(np.asarray(babble, np.float32)[index].sum(axis=0))
    if config.noise_prob > 0 and weights[2] > 0:
      kinds[2] = [np.asarray(noise, np.float32)]
    self.noise_kinds = tuple(name for name, kind in zip(("coloured", "babble", "recorded"), kinds)
                             if kind)
    banks = [bank for kind in kinds for bank in kind] or [np.zeros([self.span], np.float32)]
    # Stored as blocks of NOISE_BLOCK samples (each bank zero-padded to whole
    # blocks); a stretch starts on a block and is gathered block by block.
    blocks = [np.pad(bank, (0, -len(bank) % NOISE_BLOCK)).reshape(-1, NOISE_BLOCK)
              for bank in banks]
    self.banks = tf.constant(np.concatenate(blocks), tf.float32)
    # A view's bank: the first bank of its kind plus floor(u * banks of the kind).
    self._kind_first = tf.constant(np.cumsum([0] + [len(k) for k in kinds[:-1]]), tf.int32)
    self._kind_count = tf.constant([max(len(k), 1) for k in kinds], tf.int32)
    self.bank_start = tf.constant(np.cumsum([0] + [len(b) for b in blocks[:-1]]), tf.int32)
    # Blocks of each bank (its first block in ``banks`` is ``bank_start``).
    self.bank_blocks = tf.constant([len(b) for b in blocks], tf.int32)
    # Blocks a stretch of the bank can start on (it must end inside the bank).
    self._bank_starts = tf.constant([(len(bank) - self.span) // NOISE_BLOCK + 1
                                     for bank in banks], tf.int32)
    # Kind k is chosen when a uniform draw is at least thresholds[:k]: the
    # cumulative weights, with 2 (never reached) past the last kind in use.
    cumulative = np.cumsum(weights) / weights.sum()
    self._noise_thresholds = [float(cumulative[k]) if weights[k + 1:].sum() > 0 else 2.0
                              for k in range(len(weights) - 1)]

  @property
  def span(self) -> int:
    """Samples of the augmented stretch: the reverberation lead-in and the window."""
    return self.lead_in + self.window

  def draw(self, seeds: tf.Tensor, shift_range: Optional[tf.Tensor],
           samples: int, step_seeds: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    """The random choices of a batch of views, row b a function of ``seeds[b]``
    and ``shift_range[b]`` only (and of ``step_seeds[b]`` for a tempo not in
    the views).

    Args:
      seeds: int ``[batch, 2]``.
      shift_range: float32 ``[batch, 2]``, seconds: the lowest and highest
        window offsets from the centred clip that keep the label; None: any.
      samples: length of the context waveforms.
      step_seeds: int ``[batch, 2]``, a training step's own draws: with
        ``tempo_in_views`` false they choose the tempo (None: no tempo, as
        in a teacher's guidance views); ignored otherwise.

    Returns:
      a dict of ``[batch]`` tensors that ``apply`` takes (``speed``: the index of
      the row's resampling factor among the speeds and then the tempos, -1 for
      none), and ``warp``: each view's index in ``warp_factors`` (-1: none), for
      the features.
    """
    c = self.config
    u = uniforms(seeds, len(_COLUMNS))
    column = lambda name: u[:, _COLUMNS.index(name)]
    between = lambda name, low, high: low + column(name) * (high - low)

    sped = column("speed_on") < c.speed_prob
    speed = _pick(column("speed"), len(self._speeds))
    factor = tf.where(sped, tf.gather(tf.constant(self._speeds, tf.float32), speed), 1.0)
    warp = tf.where(column("vtlp_on") < c.vtlp_prob, _pick(column("vtlp"), len(self._vtlp)), -1)
    if self._tempos and (c.tempo_in_views or step_seeds is not None):
      draws = u if c.tempo_in_views else uniforms(step_seeds, len(_COLUMNS))
      timed = tf.logical_and(tf.logical_not(sped),
                             draws[:, _COLUMNS.index("tempo_on")] < c.tempo_prob)
      tempo = _pick(draws[:, _COLUMNS.index("tempo")], len(self._tempos))
      factor = tf.where(timed, tf.gather(tf.constant(self._tempos, tf.float32), tempo), factor)
      speed = tf.where(timed, len(self._speeds) + tempo, speed)
      warp = tf.where(timed, len(self._vtlp) + tempo, warp)
      sped = tf.logical_or(sped, timed)
    low = tf.fill(tf.shape(factor), c.shift_bias_seconds - c.max_shift_seconds)
    high = tf.fill(tf.shape(factor), c.shift_bias_seconds + c.max_shift_seconds)
    if shift_range is not None:
      # The audio is stretched by 1 / factor about the clip's centre while the
      # window keeps its length: a keyword must stay inside the window, a
      # negative's window must stay between its keywords. Either way, the
      # stricter bound of the two.
      half = self.window / self.sample_rate / 2
      lowest, highest = shift_range[:, 0], shift_range[:, 1]
      # The offsets that keep the label, then the drawn range clipped into them
      # (a single offset when the two do not meet).
      allowed_low = tf.minimum(tf.maximum((lowest + half) / factor - half,
                                          (lowest - half) / factor + half), 0.0)
      allowed_high = tf.maximum(tf.minimum((highest - half) / factor + half,
                                           (highest + half) / factor - half), 0.0)
      low = tf.clip_by_value(low, allowed_low, allowed_high)
      high = tf.clip_by_value(high, allowed_low, allowed_high)
    offset = tf.zeros(tf.shape(factor), tf.int32)
    if c.max_shift_seconds > 0 or c.shift_bias_seconds:
      offset = tf.cast(tf.round(between("shift", low, high) * self.sample_rate), tf.int32)
    # The first sample of the stretch, in samples of the sped-up waveform.
    stretched = tf.cast(tf.round(tf.cast(samples, tf.float32) / factor), tf.int32)
    start = (stretched - self.window) // 2 + offset - self.lead_in

    rooms = 1 if self.rirs is None else int(self.rirs.shape[0])
    kind = tf.add_n([tf.cast(column("noise_kind") >= t, tf.int32)
                     for t in self._noise_thresholds])
    count = tf.gather(self._kind_count, kind)
    bank = tf.gather(self._kind_first, kind) + tf.minimum(
        tf.cast(column("noise_bank") * tf.cast(count, tf.float32), tf.int32), count - 1)
    return {
        "factor": factor, "speed": tf.where(sped, speed, -1), "start": start,
        "reverb": column("reverb_on") < c.reverb_prob,
        "room": tf.minimum(tf.cast(column("room") * rooms, tf.int32), rooms - 1),
        "add_noise": column("noise_on") < c.noise_prob, "noise_bank": bank,
        "noise_at": column("noise_at"),
        "snr_db": between("snr", c.snr_db_min, c.snr_db_max),
        "telephone": column("telephone_on") < c.telephone_prob,
        "gain_db": between("gain", c.gain_db_min, c.gain_db_max), "warp": warp}

  def teacher_warp(self, choices: Dict[str, tf.Tensor]) -> tf.Tensor:
    """int32 ``[batch]``: ``choices["warp"]`` for a teacher's features, the tempo
    warps alone (VTLP is the student's own): the teacher of a view hears the
    tempo the student does."""
    return tf.where(choices["warp"] >= len(self._vtlp), choices["warp"], -1)

  def apply(self, waveforms: tf.Tensor, choices: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The windows of a batch (the signal processing, vectorised).

    Args:
      waveforms: float32 ``[batch, samples]``, clips centred in their context.
      choices: ``draw``'s dict for the batch.

    Returns:
      float32 ``[batch, window_samples]`` in [-1, 1].
    """
    c = self.config
    waveforms = tf.cast(waveforms, tf.float32)
    samples = tf.shape(waveforms)[1]
    # Speed and crop in one: the stretch of a row sped up by a factor f is the
    # round(span * f) samples from round(start * f) on (zeros outside the
    # waveform), resized to span samples by linear interpolation (tf.image.resize:
    # stretch sample j at (j + 0.5) * round(span * f) / span - 0.5, clamped to the
    # ends).
    first = tf.cast(tf.round(tf.cast(choices["start"], tf.float32) * choices["factor"]),
                    tf.int32)
    longest = max(self._lengths + [self.span])
    waveforms = tf.pad(waveforms, [[0, 0], [0, tf.maximum(longest - samples, 0)]])
    region = tf.image.extract_glimpse(
        waveforms[:, tf.newaxis, :, tf.newaxis], [1, longest],
        tf.cast(tf.stack([tf.zeros_like(first), first], axis=1), tf.float32),
        centered=False, normalized=False, noise="zero")[:, 0, :, 0]
    # Rows kept as cut, then the rows of each resampling factor, stitched back in
    # one pass.
    resized = [index for index, length in enumerate(self._lengths) if length != self.span]
    kept = tf.where(tf.reduce_all(tf.not_equal(choices["speed"][:, None], resized), axis=1)
                    if resized else tf.ones_like(choices["speed"], tf.bool))[:, 0]
    rows, parts = [kept], [tf.gather(region[:, :self.span], kept)]
    for index in resized:
      chosen = tf.where(tf.equal(choices["speed"], index))[:, 0]
      rows.append(chosen)
      parts.append(tf.image.resize(
          tf.gather(region, chosen)[:, tf.newaxis, :self._lengths[index], tf.newaxis],
          [1, self.span])[:, 0, :, 0])
    x = tf.dynamic_stitch([tf.cast(r, tf.int32) for r in rows], parts)
    reference = tf.maximum(tf.reduce_mean(tf.square(waveforms), axis=1), SILENCE_POWER)

    if self.room_spectra is not None:
      def reverberate(dry, rows):
        spectrum = (tf.signal.rfft(tf.pad(dry, [[0, 0], [0, self._fft_length - self.span]])) *
                    tf.gather(self.room_spectra, tf.gather(choices["room"], rows)))
        wet = tf.signal.irfft(spectrum, [self._fft_length])[:, :self.span]
        return wet * tf.sqrt((_power(dry, keep=True) + 1e-12) / (_power(wet, keep=True) + 1e-12))
      x = on_rows(choices["reverb"], x, reverberate)

    if c.noise_prob > 0:
      x = self._add_noise(x, reference, choices)
    x = x[:, self.lead_in:]

    if c.telephone_prob > 0:
      x = on_rows(choices["telephone"], x, lambda rows_x, _: telephone(rows_x, self.sample_rate))
    x = x * tf.pow(10.0, choices["gain_db"] / 20.0)[:, None]
    return tf.ensure_shape(tf.clip_by_value(x, -1.0, 1.0), [None, self.window])

  def _add_noise(self, x: tf.Tensor, reference: tf.Tensor,
                 choices: Dict[str, tf.Tensor]) -> tf.Tensor:
    """``x [batch, span]`` plus, on the chosen rows, a stretch of each row's noise
    bank at the row's SNR against ``reference`` (the power of its whole context)."""
    blocks = -(-self.span // NOISE_BLOCK)

    # Every row's stretch is cut (most rows take noise); the others add it at 0.
    bank = choices["noise_bank"]
    start = tf.gather(self.bank_start, bank) + tf.cast(
        choices["noise_at"] * tf.cast(tf.gather(self._bank_starts, bank), tf.float32), tf.int32)
    stretch = tf.gather(self.banks, start[:, None] + tf.range(blocks)[None])
    added = tf.reshape(stretch, [-1, blocks * NOISE_BLOCK])[:, :self.span]
    in_window = tf.maximum(tf.reduce_mean(tf.square(added[:, self.lead_in:]), axis=1), 1e-12)
    scale = tf.sqrt(reference / (in_window * tf.pow(10.0, choices["snr_db"] / 10.0)))
    return x + tf.where(choices["add_noise"], scale, 0.0)[:, None] * added

  def __call__(self, waveform: tf.Tensor, seed: tf.Tensor,
               shift_range: Optional[tf.Tensor] = None) -> tf.Tensor:
    """One augmented window: ``apply`` of ``draw`` for a batch of one.

    Args:
      waveform: float32 ``[samples]``, the clip centred in its context.
      seed: int ``[2]``.
      shift_range: float32 ``[2]`` seconds (see ``draw``), or None.

    Returns:
      float32 ``[window_samples]`` in [-1, 1].
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    samples = waveform.shape[0] if waveform.shape[0] is not None else tf.shape(waveform)[0]
    choices = self.draw(tf.convert_to_tensor(seed)[tf.newaxis],
                        None if shift_range is None else
                        tf.convert_to_tensor(shift_range, tf.float32)[tf.newaxis], samples)
    return self.apply(waveform[tf.newaxis], choices)[0]


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
