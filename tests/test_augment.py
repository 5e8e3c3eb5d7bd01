"""Waveform augmentation (kws_tf/augment.py) against numpy / librosa references, and the
kws raw records with context and shift ranges that feed it (create_tfrecords, data)."""
import dataclasses
import glob
import os
import re
import unicodedata

import librosa
import numpy as np
import pytest
import soundfile

import kws_tf  # noqa: F401
import tensorflow as tf

from conftest import run_module
from kws_tf import augment, data, features, records, text, warp
from kws_tf.config import AugmentConfig

SR = 16000
CLIP = 1.0
CONTEXT = 0.5


def quiet(**overrides) -> AugmentConfig:
  """Every step off (probabilities 0, no shift, gain 0 dB), then ``overrides``."""
  fields = dict(enabled=True, max_shift_seconds=0.0, speed_prob=0.0, reverb_prob=0.0,
                noise_prob=0.0, telephone_prob=0.0, gain_db_min=0.0, gain_db_max=0.0)
  fields.update(overrides)
  return AugmentConfig(**fields)


def seed(i, j=7):
  return tf.constant([i, j], tf.int64)


def power(x):
  return float(np.mean(np.square(np.asarray(x, np.float64))))


def context_signal(rng, seconds=CLIP + 2 * CONTEXT, std=0.1):
  return np.clip(rng.normal(0.0, std, int(round(seconds * SR))), -1, 1).astype(np.float32)


def centred(waveform, window=int(CLIP * SR)):
  start = (len(waveform) - window) // 2
  return waveform[start:start + window]


# ---------------------------------------------------------------------------
# Signal primitives.

@pytest.mark.parametrize("factor", [0.85, 0.9, 1.1, 1.15])
def test_speed_is_linear_interpolation_about_the_centre(factor):
  """Speed alone: the stretch (lead-in and window) is round(span * factor) input
  samples from round(start * factor) on, start being where the centred window's
  stretch begins in sped-up samples, linearly interpolated to span samples with
  half-pixel centres (np.interp at (j + 0.5) * length / span - 0.5, clamped)."""
  rng = np.random.default_rng(1)
  x = context_signal(rng)
  n, window = len(x), int(CLIP * SR)
  augmenter = augment.Augmenter(quiet(speed_prob=1.0, speed_min=factor, speed_max=factor),
                                SR, CLIP)
  y = augmenter(tf.constant(x), seed(3)).numpy()
  assert y.shape == (window,)
  factor = np.float32(factor)
  span = augmenter.span
  start = (round(n / float(factor)) - window) // 2 - augmenter.lead_in
  first = int(np.round(np.float32(start) * factor))
  length = int(round(span * float(factor)))
  j = np.arange(span)
  position = np.clip((j + 0.5) * length / span - 0.5, 0, length - 1) + first
  reference = np.interp(position, np.arange(n), x)[augmenter.lead_in:]
  # tf.image.resize places samples in float32: to about 2e-3 of a sample here.
  np.testing.assert_allclose(y, reference, atol=1e-3)
  assert np.sqrt(np.mean((y - reference) ** 2)) < 2e-4  # -54 dB against the signal


def test_speed_factors_are_an_even_grid_over_the_range():
  augmenter = augment.Augmenter(quiet(speed_prob=1.0, speed_min=0.85, speed_max=1.15), SR, CLIP)
  seeds = tf.constant(np.random.default_rng(0).integers(0, 2 ** 40, size=(700, 2)), tf.int64)
  factors = augmenter.draw(seeds, None, int((CLIP + 2 * CONTEXT) * SR))["factor"].numpy()
  values, counts = np.unique(np.round(factors, 4), return_counts=True)
  np.testing.assert_allclose(values, np.linspace(0.85, 1.15, augment.SPEED_VALUES), atol=1e-4)
  assert counts.min() > 60  # about 100 each


def _band(frequencies):
  return (frequencies >= 300.0) & (frequencies <= 3400.0)


def test_telephone_keeps_the_300_3400_hz_band_of_white_noise():
  x = np.random.default_rng(3).normal(0, 0.1, SR).astype(np.float32)
  y = augment.telephone(tf.constant(x), SR).numpy()
  assert y.shape == x.shape
  spectrum = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
  band = _band(np.fft.rfftfreq(len(y), 1.0 / SR))
  # Outside the band only mu-law quantisation noise: about -40 dB here.
  assert spectrum[~band].sum() / spectrum[band].sum() < 1e-3
  # Inside, the band-passed input (numpy FFT) up to the quantisation noise.
  x_spectrum = np.fft.rfft(x.astype(np.float64))
  x_spectrum[~band] = 0
  narrow = np.fft.irfft(x_spectrum, len(x))
  assert np.sqrt(power(y - narrow) / power(narrow)) < 0.03


def test_telephone_mu_law_matches_librosa():
  """A signal inside the band passes the filter; the 8-bit mu-law is librosa's
  compress + expand (mu 255) to within one quantisation step of the compressed
  value (librosa's levels are k/128, these (2j - 255)/255: both 256 levels)."""
  t = np.arange(SR) / SR
  x = (0.3 * np.sin(2 * np.pi * 500 * t) + 0.3 * np.sin(2 * np.pi * 1234 * t + 1)
       + 0.25 * np.sin(2 * np.pi * 3000 * t + 2)).astype(np.float32)
  y = augment.telephone(tf.constant(x), SR).numpy().astype(np.float64)
  expected = librosa.mu_expand(librosa.mu_compress(x.astype(np.float64), mu=255, quantize=True),
                               mu=255, quantize=True)
  ours = librosa.mu_compress(np.clip(y, -1, 1), mu=255, quantize=False)
  theirs = librosa.mu_compress(expected, mu=255, quantize=False)
  step = 2.0 / 255
  assert np.abs(ours - theirs).max() <= step + 1e-3
  # 8 bits: at most 256 distinct values, on the grid of compressed levels.
  assert len(np.unique(y)) <= 256
  levels = (ours + 1) / step
  np.testing.assert_allclose(levels, np.round(levels), atol=2e-3)
  # And it is still the input, up to the companding error.
  assert np.sqrt(power(y - x) / power(x)) < 0.03


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_coloured_noise_has_unit_power_and_a_1_over_f_beta_spectrum(beta):
  length = 4096
  spectra = []
  for i in range(24):
    white = tf.random.stateless_normal([length], seed(i, 11))
    noise = augment.shape_noise(white, tf.constant(beta)).numpy()
    assert noise.shape == (length,)
    assert power(noise) == pytest.approx(1.0, rel=1e-4)
    spectra.append(np.abs(np.fft.rfft(noise.astype(np.float64))) ** 2)
  average = np.mean(spectra, axis=0)
  k = np.arange(1, len(average))
  slope = np.polyfit(np.log(k), np.log(average[1:]), 1)[0]
  assert slope == pytest.approx(-beta, abs=0.15)


def test_synthetic_rir_direct_path_and_60_db_decay_at_rt60():
  rt60, max_seconds = 0.3, 0.5
  rir = augment.synthetic_rir(seed(3, 4), tf.constant(rt60), SR, max_seconds).numpy()
  assert rir.shape == (int(round(max_seconds * SR)),)
  assert rir[0] == 1.0
  delay = int(round(0.0025 * SR))  # _DIRECT_DELAY_SECONDS
  assert not np.any(rir[1:delay]) and rir[delay] != 0

  def energy(seconds, half=0.005):
    return power(rir[int((seconds - half) * SR):int((seconds + half) * SR)])

  drop_db = 10 * np.log10(energy(0.0025 + 0.005) / energy(rt60))
  assert 45 <= drop_db <= 75
  # Half way, about half the drop (an exponential decay, not a cut).
  half_db = 10 * np.log10(energy(0.0025 + 0.005) / energy(rt60 / 2))
  assert 20 <= half_db <= 40
  # The reverberant energy grows with RT60 (the docstring: 0.1 at RT60 = 0.1 s).
  assert float(np.sum(np.square(rir[1:], dtype=np.float64))) == pytest.approx(rt60, rel=1e-3)


def test_uniforms_are_per_row_uniform_and_independent_of_the_batch():
  rng = np.random.default_rng(0)
  seeds = tf.constant(rng.integers(0, 2 ** 40, size=(4000, 2)), tf.int64)
  u = augment.uniforms(seeds, 6).numpy()
  assert u.shape == (4000, 6) and u.min() >= 0.0 and u.max() < 1.0
  # Uniform: every decile holds about a tenth (binomial sd ~0.002).
  counts = np.histogram(u[:, 0], bins=10, range=(0, 1))[0] / 4000
  assert np.abs(counts - 0.1).max() < 0.02
  # Columns and neighbouring rows are uncorrelated; consecutive seeds too.
  assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05
  consecutive = augment.uniforms(tf.stack([tf.range(4000, dtype=tf.int64),
                                           tf.zeros([4000], tf.int64)], 1), 2).numpy()
  assert abs(np.corrcoef(consecutive[:-1, 0], consecutive[1:, 0])[0, 1]) < 0.05
  # A row is the same alone and in any batch.
  np.testing.assert_array_equal(augment.uniforms(seeds[7:8], 6).numpy()[0], u[7])


def test_a_batch_of_views_equals_the_views_one_by_one():
  """``apply(draw(seeds))`` row b is ``Augmenter(waveform b, seed b)``: guidance
  made one view at a time matches a student's batches."""
  rng = np.random.default_rng(3)
  babble = rng.normal(0, 0.1, 4 * SR).astype(np.float32)
  noise = rng.normal(0, 0.1, 3 * SR).astype(np.float32)
  config = AugmentConfig(enabled=True, speed_prob=0.5, reverb_prob=0.5, noise_prob=0.7,
                         telephone_prob=0.3)
  augmenter = augment.Augmenter(config, SR, CLIP, babble=babble, noise=noise)
  assert augmenter.noise_kinds == ("coloured", "babble", "recorded")
  waves = np.stack([context_signal(rng, std=0.2) for _ in range(12)])
  seeds = tf.constant(rng.integers(0, 2 ** 40, size=(12, 2)), tf.int64)
  shift = tf.constant(np.tile([[-0.2, 0.25]], (12, 1)), tf.float32)
  choices = augmenter.draw(seeds, shift, waves.shape[1])
  batch = augmenter.apply(tf.constant(waves), choices).numpy()
  for b in range(12):
    one = augmenter(tf.constant(waves[b]), seeds[b], shift[b]).numpy()
    np.testing.assert_allclose(batch[b], one, atol=1e-5)
  # The draws cover the steps: some rows get each one and some do not.
  for key in ("reverb", "add_noise", "telephone"):
    assert 0 < np.sum(choices[key].numpy()) < 12
  assert len(set(choices["noise_bank"].numpy()[choices["add_noise"].numpy()])) > 1


def test_recorded_noise_alone_comes_from_the_recordings():
  """With only recorded noise weighted, the added noise is a stretch of the bank
  (a 1 kHz tone here) at the drawn SNR."""
  t = np.arange(3 * SR) / SR
  tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
  x = context_signal(np.random.default_rng(2), std=0.1)
  config = quiet(noise_prob=1.0, snr_db_min=5.0, snr_db_max=5.0, coloured_noise_weight=0.0,
                 babble_weight=0.0, recorded_noise_weight=1.0)
  augmenter = augment.Augmenter(config, SR, CLIP, noise=tone)
  assert augmenter.noise_kinds == ("recorded",)
  for i in range(3):
    added = (augmenter(tf.constant(x), seed(i)).numpy() - centred(x)).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(added)) ** 2
    f = np.fft.rfftfreq(len(added), 1.0 / SR)
    assert spectrum[np.abs(f - 1000) <= 2].sum() > 0.99 * spectrum.sum()
    assert 10 * np.log10(power(x) / power(added)) == pytest.approx(5.0, abs=0.1)


# ---------------------------------------------------------------------------
# Augmenter.

def test_augmenter_window_shape_range_and_seeding():
  rng = np.random.default_rng(4)
  babble = rng.normal(0, 0.1, 3 * SR).astype(np.float32)
  augmenter = augment.Augmenter(AugmentConfig(enabled=True), SR, CLIP, babble=babble)
  fn = tf.function(augmenter)
  x = context_signal(rng, std=0.5)
  outputs = []
  for i in range(6):
    y = fn(tf.constant(x), seed(i), tf.constant([-0.2, 0.2])).numpy()
    assert y.shape == (int(CLIP * SR),) and y.dtype == np.float32
    assert y.min() >= -1.0 and y.max() <= 1.0
    outputs.append(y)
  again = fn(tf.constant(x), seed(0), tf.constant([-0.2, 0.2])).numpy()
  np.testing.assert_array_equal(again, outputs[0])
  for y in outputs[1:]:
    assert not np.array_equal(y, outputs[0])


def test_augmenter_with_every_step_off_is_the_centred_crop():
  x = context_signal(np.random.default_rng(5), std=0.3)
  augmenter = augment.Augmenter(quiet(), SR, CLIP)
  for i in range(3):
    for shift_range in (None, tf.constant([-0.3, 0.3])):
      y = augmenter(tf.constant(x), seed(i), shift_range).numpy()
      np.testing.assert_array_equal(y, centred(x))


def test_augmenter_noise_snr_against_the_whole_context():
  rng = np.random.default_rng(6)
  # The window is quieter than its context: the SNR refers to the whole context.
  x = context_signal(rng, std=0.1)
  window = int(CLIP * SR)
  start = (len(x) - window) // 2
  x[start:start + window] *= 0.4
  config = quiet(noise_prob=1.0, snr_db_min=10.0, snr_db_max=10.0, babble_weight=0.0,
                 recorded_noise_weight=0.0)
  fn = tf.function(augment.Augmenter(config, SR, CLIP))
  noise_powers = []
  for i in range(24):
    y = fn(tf.constant(x), seed(i, 9)).numpy()
    noise = y - centred(x)
    noise_powers.append(power(noise))
    # One draw: the noise is scaled over window + lead-in, so brown noise's
    # uneven level moves the window's SNR a little.
    assert 10 * np.log10(power(x) / noise_powers[-1]) == pytest.approx(10.0, abs=2.0)
  assert 10 * np.log10(power(x) / np.mean(noise_powers)) == pytest.approx(10.0, abs=0.5)


def _impulse_offsets(fn, shift_range, seeds=120):
  """Window offsets (seconds) of the augmenter, found from where an impulse at the
  context's centre lands in the window."""
  length = int((CLIP + 2 * CONTEXT) * SR)
  impulse = np.zeros(length, np.float32)
  impulse[length // 2] = 1.0
  centred_start = (length - int(CLIP * SR)) // 2
  offsets = []
  for i in range(seeds):
    y = fn(tf.constant(impulse), seed(i, 1), tf.constant(shift_range, tf.float32)).numpy()
    hits = np.flatnonzero(y)
    assert len(hits) == 1 and y[hits[0]] == 1.0
    offsets.append((length // 2 - centred_start - hits[0]) / SR)
  return np.array(offsets)


@pytest.mark.parametrize("shift_range,expected", [
    ((-0.5, 0.1), (-0.3, 0.1)),    # clipped to max_shift_seconds below
    ((-0.05, 0.25), (-0.05, 0.25)),
])
def test_augmenter_shift_stays_in_the_shift_range(shift_range, expected):
  fn = tf.function(augment.Augmenter(quiet(max_shift_seconds=0.3), SR, CLIP))
  offsets = _impulse_offsets(fn, shift_range)
  tolerance = 1.0 / SR
  assert offsets.min() >= expected[0] - tolerance and offsets.max() <= expected[1] + tolerance
  assert (offsets < 0).any() and (offsets > 0).any()
  # Uniform over the range: both ends are approached.
  width = expected[1] - expected[0]
  assert offsets.min() < expected[0] + 0.1 * width and offsets.max() > expected[1] - 0.1 * width



@pytest.mark.parametrize("shift_range,expected", [
    ((-0.5, 0.3), (-0.3, -0.1)),     # the whole drawn range: bias -0.2 +- 0.1
    ((-0.15, 0.3), (-0.15, -0.1)),   # its lower end clipped to the shift range
    ((-0.05, 0.3), (-0.05, -0.05)),  # no overlap: the allowed offset nearest to it
])
def test_shift_bias_moves_the_windows_earlier_within_the_shift_range(shift_range, expected):
  """A negative bias starts the windows earlier, so the clip's centre lands
  later in them, and never beyond the offsets that keep the label."""
  fn = tf.function(augment.Augmenter(quiet(max_shift_seconds=0.1, shift_bias_seconds=-0.2),
                                     SR, CLIP))
  offsets = _impulse_offsets(fn, shift_range, seeds=60)
  tolerance = 1.0 / SR
  assert offsets.min() >= expected[0] - tolerance and offsets.max() <= expected[1] + tolerance
  width = expected[1] - expected[0]
  assert offsets.min() < expected[0] + 0.1 * width + tolerance
  assert offsets.max() > expected[1] - 0.1 * width - tolerance

def _sped_up(config_speed, fn_signal, shift_range, seeds=40):
  config = quiet(max_shift_seconds=0.3, speed_prob=1.0, speed_min=config_speed,
                 speed_max=config_speed)
  fn = tf.function(augment.Augmenter(config, SR, CLIP))
  return [fn(tf.constant(fn_signal), seed(i, 2), tf.constant(shift_range, tf.float32)).numpy()
          for i in range(seeds)]


def test_speed_and_shift_keep_a_slowed_keyword_whole():
  """A keyword of 0.6 s centred in the clip (shift_range +-0.2 s, as plan_kws writes
  it) slowed to 0.85: 0.706 s, which fits the 1 s window for offsets up to 0.147 s."""
  length = int((CLIP + 2 * CONTEXT) * SR)
  keyword = np.zeros(length, np.float32)
  keyword[int(0.7 * SR):int(1.3 * SR)] = 0.5
  expected_samples = 0.6 * SR / 0.85
  cut = 0
  for y in _sped_up(0.85, keyword, (-0.2, 0.2)):
    if np.count_nonzero(y) < expected_samples - 2:
      cut += 1
  assert cut == 0, f"{cut} of 40 windows cut the keyword"


def test_speed_and_shift_keep_a_sped_up_negative_clear_of_keywords():
  """Keywords end 0.1 s before and start 0.1 s after a negative clip (shift_range
  (-0.1, 0.1)); sped up 1.15 times, every window must still hold no keyword."""
  length = int((CLIP + 2 * CONTEXT) * SR)
  signal = np.zeros(length, np.float32)
  signal[:int(0.4 * SR)] = 0.5
  signal[int(1.6 * SR):] = 0.5
  overlapping = sum(np.count_nonzero(y) > 2 for y in _sped_up(1.15, signal, (-0.1, 0.1)))
  assert overlapping == 0, f"{overlapping} of 40 windows overlap a keyword"


def test_augmenter_reverb_with_a_given_rir_is_a_convolution_over_the_lead_in():
  rng = np.random.default_rng(7)
  x = context_signal(rng, std=0.1)
  rir = np.zeros(int(0.3 * SR), np.float32)
  rir[0], rir[800], rir[2000] = 1.0, 0.5, -0.25  # reflections 50 and 125 ms late
  augmenter = augment.Augmenter(quiet(reverb_prob=1.0), SR, CLIP, rirs=rir[np.newaxis])
  y = augmenter(tf.constant(x), seed(1)).numpy()
  window = int(CLIP * SR)
  start = (len(x) - window) // 2
  segment = x[start - augmenter.lead_in:start + window].astype(np.float64)
  wet = np.convolve(segment, rir.astype(np.float64))[:len(segment)]
  wet *= np.sqrt(power(segment) / power(wet))  # reverberation keeps the level
  np.testing.assert_allclose(y, wet[augmenter.lead_in:], atol=1e-5)


def test_fft_length_is_the_smallest_5_smooth_length():
  def smooth(n):
    for p in (2, 3, 5):
      while n % p == 0:
        n //= p
    return n == 1
  for samples in list(range(1, 2000)) + [30399, 35199]:
    length = augment.fft_length(samples)
    assert length >= samples and smooth(length), samples
    assert not any(smooth(n) for n in range(samples, length)), samples


def test_augmenter_reverb_keeps_the_last_tap_of_a_long_rir():
  # A reflection at the RIR's last tap: a circular wrap of the spectra's
  # product would put it at the window's start (here the FFT is 30,720
  # samples, not the next power of two, 32,768).
  rng = np.random.default_rng(9)
  x = context_signal(rng, std=0.1)
  rir = np.zeros(int(0.7 * SR), np.float32)
  rir[0], rir[-1] = 1.0, 0.8
  augmenter = augment.Augmenter(quiet(reverb_prob=1.0), SR, CLIP, rirs=rir[np.newaxis])
  assert augmenter._fft_length == 30720
  y = augmenter(tf.constant(x), seed(1)).numpy()
  window = int(CLIP * SR)
  start = (len(x) - window) // 2
  segment = x[start - augmenter.lead_in:start + window].astype(np.float64)
  wet = np.convolve(segment, rir.astype(np.float64))[:len(segment)]
  wet *= np.sqrt(power(segment) / power(wet))
  np.testing.assert_allclose(y, wet[augmenter.lead_in:], atol=1e-5)


def test_augmenter_babble_comes_from_the_bank():
  rng = np.random.default_rng(8)
  # Babble bank: 2-4 kHz noise; clean: a 300 Hz tone. The added noise must lie in 2-4 kHz.
  bank = rng.normal(0, 0.1, 4 * SR)
  spectrum = np.fft.rfft(bank)
  freqs = np.fft.rfftfreq(len(bank), 1.0 / SR)
  spectrum[(freqs < 2000) | (freqs > 4000)] = 0
  bank = np.fft.irfft(spectrum, len(bank)).astype(np.float32)
  t = np.arange(int((CLIP + 2 * CONTEXT) * SR)) / SR
  x = (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
  config = quiet(noise_prob=1.0, snr_db_min=10.0, snr_db_max=10.0, coloured_noise_weight=0.0,
                 babble_weight=1.0, recorded_noise_weight=0.0, babble_talkers=4)
  fn = tf.function(augment.Augmenter(config, SR, CLIP, babble=bank))
  previous = None
  for i in range(4):
    y = fn(tf.constant(x), seed(i, 5)).numpy()
    noise = (y - centred(x)).astype(np.float64)
    noise_spectrum = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(len(noise), 1.0 / SR)
    inside = (f >= 1900) & (f <= 4100)
    assert noise_spectrum[~inside].sum() < 1e-3 * noise_spectrum[inside].sum()
    assert 10 * np.log10(power(x) / power(noise)) == pytest.approx(10.0, abs=1.5)
    assert previous is None or not np.allclose(noise, previous)
    previous = noise


def test_augmenter_rejects_a_bank_shorter_than_the_window():
  short = np.zeros(int(0.5 * SR), np.float32)
  with pytest.raises(ValueError, match="babble bank"):
    augment.Augmenter(AugmentConfig(enabled=True), SR, CLIP, babble=short)
  with pytest.raises(ValueError, match="noise bank"):
    augment.Augmenter(AugmentConfig(enabled=True), SR, CLIP, noise=short)


# ---------------------------------------------------------------------------
# Noise and impulse-response folders.

def test_load_noise_bank_resamples_and_normalises_every_file(tmp_path):
  rng = np.random.default_rng(9)
  a = np.clip(rng.normal(0, 0.2, 8000), -1, 1)
  t8 = np.arange(4000) / 8000
  b = 0.3 * np.sin(2 * np.pi * 440 * t8)  # 220 whole cycles
  c = np.clip(rng.normal(0, 0.05, 4000), -1, 1)
  soundfile.write(tmp_path / "a.wav", a, 16000, subtype="PCM_16")
  soundfile.write(tmp_path / "b.wav", b, 8000, subtype="PCM_16")
  soundfile.write(tmp_path / "d_silent.wav", np.zeros(1000), 16000, subtype="PCM_16")
  os.makedirs(tmp_path / "sub")
  soundfile.write(tmp_path / "sub" / "c.wav", c, 16000, subtype="PCM_16")
  (tmp_path / "notes.txt").write_text("not audio")

  bank = augment.load_noise_bank(str(tmp_path), SR)
  assert bank.dtype == np.float32 and bank.shape == (8000 + 8000 + 4000,)
  parts = [bank[:8000], bank[8000:16000], bank[16000:]]
  for part in parts:
    assert power(part) == pytest.approx(1.0, rel=1e-4)
  for part, name in ((parts[0], "a.wav"), (parts[2], "sub/c.wav")):
    stored, rate = soundfile.read(tmp_path / name, dtype="float64")
    assert rate == SR
    np.testing.assert_allclose(part, stored / np.sqrt(power(stored)), rtol=1e-5, atol=1e-6)
  # The 8 kHz tone, resampled: the same 440 Hz tone at 16 kHz, at unit power.
  n = np.arange(8000)
  tone = np.sqrt(2) * np.sin(2 * np.pi * 440 * n / SR)
  np.testing.assert_allclose(parts[1][500:7500], tone[500:7500], atol=0.02)


def test_load_rirs_start_at_the_peak_scaled_to_one(tmp_path):
  rng = np.random.default_rng(10)
  decay = np.exp(-np.arange(int(0.3 * SR)) / 800)
  long = np.concatenate([np.zeros(50), [-0.8], 0.3 * rng.normal(size=len(decay)) * decay])
  short8k = np.concatenate([np.zeros(20), [0.9], 0.2 * rng.normal(size=800) * decay[:800]])
  soundfile.write(tmp_path / "a_long.wav", np.clip(long, -1, 1), 16000, subtype="PCM_16")
  soundfile.write(tmp_path / "b_short.wav", np.clip(short8k, -1, 1), 8000, subtype="PCM_16")
  rirs = augment.load_rirs(str(tmp_path), SR, max_seconds=0.2)
  taps = int(0.2 * SR)
  assert rirs.shape == (2, taps) and rirs.dtype == np.float32
  np.testing.assert_array_equal(rirs[:, 0], 1.0)
  stored, _ = soundfile.read(tmp_path / "a_long.wav", dtype="float64")
  np.testing.assert_allclose(rirs[0], stored[50:50 + taps] / stored[50], rtol=1e-5, atol=1e-6)
  # Resampled: starts at its largest sample, then zeros past the file's end.
  assert np.abs(rirs[1]).max() <= 1.0 + 1e-6
  resampled = 2 * len(short8k)
  assert np.any(rirs[1][1:resampled - 60]) and not np.any(rirs[1][resampled:])


def test_empty_folders_are_value_errors_naming_the_folder(tmp_path):
  empty = tmp_path / "empty"
  os.makedirs(empty)
  (empty / "readme.txt").write_text("no audio here")
  with pytest.raises(ValueError, match=re.escape(str(empty))):
    augment.load_noise_bank(str(empty), SR)
  with pytest.raises(ValueError, match=re.escape(str(empty))):
    augment.load_rirs(str(empty), SR, 0.5)


# ---------------------------------------------------------------------------
# Records with context, shift ranges and the augmented pipeline.

@pytest.fixture(scope="module")
def context_records(synthetic_corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("augment") / "records"
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}",
             "--corpus=vivos", f"--out_dir={out}", "--splits=train,test",
             "--task=kws", "--formats=raw,mfcc", f"--context_seconds={CONTEXT}",
             f"--alignments={synthetic_corpus}/*/alignments.ctm", "--cores=2")
  return str(out)


def read_records(records_dir, fmt, split):
  """id -> dict of the record's fields, decoded with numpy."""
  metadata = records.load_metadata(records_dir)
  dtype = "<i2" if metadata.formats[fmt].raw else "<f4"
  channels = metadata.formats[fmt].num_channels
  out = {}
  for path in data.shard_paths(records_dir, fmt, split):
    for raw in tf.data.TFRecordDataset(path, records.tf_compression(
        metadata.compression)):
      f = tf.train.Example.FromString(raw.numpy()).features.feature
      values = np.frombuffer(f["features"].bytes_list.value[0], dtype)
      out[f["id"].bytes_list.value[0].decode()] = {
          "values": values if dtype == "<i2" else values.reshape(-1, channels),
          "label": f["label"].int64_list.value[0],
          "text": f["text"].bytes_list.value[0].decode(),
          "utterance": f["utterance"].bytes_list.value[0].decode(),
          "start": round(float(f["start"].float_list.value[0]), 3),
          "shift_range": [round(float(v), 3) for v in f["shift_range"].float_list.value],
      }
  return out


def read_ctm(corpus):
  """utterance -> [(start, end, word)] from the corpus' CTM files (own parser)."""
  words = {}
  for path in glob.glob(os.path.join(str(corpus), "*", "alignments.ctm")):
    with open(path, encoding="utf-8") as f:
      for line in f:
        fields = line.split()
        if len(fields) >= 5:
          start, duration = float(fields[2]), float(fields[3])
          word = unicodedata.normalize("NFC", fields[4]).lower()
          words.setdefault(fields[0], []).append((start, start + duration, word))
  return words


def test_raw_records_hold_the_clip_with_context(context_records, synthetic_corpus):
  metadata = records.load_metadata(context_records)
  assert metadata.context_seconds == CONTEXT
  clip, context = int(CLIP * SR), int(CONTEXT * SR)
  checked = 0
  for split in ("train", "test"):
    raw = read_records(context_records, "raw", split)
    assert raw and metadata.splits[split].max_frames["raw"] == clip + 2 * context
    for example_id, record in raw.items():
      values = record["values"]
      assert len(values) == clip + 2 * context, example_id
      path, = glob.glob(os.path.join(str(synthetic_corpus), split, "waves", "*",
                                     record["utterance"] + ".wav"))
      audio, rate = soundfile.read(path, dtype="int16")
      assert rate == SR
      start = int(round(record["start"] * SR))
      expected = np.zeros(clip + 2 * context, np.int16)
      lo, hi = max(start - context, 0), min(start + clip + context, len(audio))
      expected[lo - (start - context):hi - (start - context)] = audio[lo:hi]
      np.testing.assert_array_equal(values[context:context + clip],
                                    expected[context:context + clip], err_msg=example_id)
      np.testing.assert_array_equal(values, expected, err_msg=example_id)
      checked += 1
  assert checked == sum(metadata.splits[s].examples for s in ("train", "test"))


def test_shift_ranges_keep_the_labels(context_records, synthetic_corpus):
  metadata = records.load_metadata(context_records)
  negative = metadata.negative_label
  keywords = set(text.KEYWORDS)
  ctm = read_ctm(synthetic_corpus)
  tol = 2e-3
  positives = negatives = 0
  for split in ("train", "test"):
    for example_id, r in read_records(context_records, "raw", split).items():
      low, high = r["shift_range"]
      assert low <= 0 <= high, example_id
      spans = [(s, e) for s, e, w in ctm[r["utterance"]] if w in keywords]
      if r["label"] != negative:
        middle = r["start"] + CLIP / 2
        matches = [(s, e) for s, e, w in ctm[r["utterance"]]
                   if w == r["text"] and abs((s + e) / 2 - middle) < tol]
        assert len(matches) == 1, example_id
        s, e = matches[0]
        for offset in (low, high):
          window = (r["start"] + offset, r["start"] + offset + CLIP)
          assert window[0] <= s + tol and e <= window[1] + tol, (example_id, offset)
        # The range is the whole slack (a keyword shorter than the clip).
        assert high - low == pytest.approx(max(CLIP - (e - s), 0.0), abs=tol)
        positives += 1
      else:
        covered = (r["start"] + low, r["start"] + high + CLIP)
        for s, e in spans:
          assert e <= covered[0] + tol or s >= covered[1] - tol, (example_id, s, e)
        # Each end is a keyword's edge, or the clip length away.
        assert low == pytest.approx(-CLIP, abs=tol) or any(
            abs(e - covered[0]) < tol for s, e in spans), example_id
        assert high == pytest.approx(CLIP, abs=tol) or any(
            abs(s - covered[1]) < tol for s, e in spans), example_id
        negatives += 1
  assert positives and negatives


def test_pipeline_without_augmentation_gives_the_stored_features(context_records):
  augmenter = augment.Augmenter(quiet(), SR, CLIP)
  metadata = records.load_metadata(context_records)
  stats = metadata.normalization["mfcc"]
  stored = read_records(context_records, "mfcc", "train")
  ds = data.make_dataset(context_records, "mfcc", "train", batch_size=8, training=True,
                         augmenter=augmenter, seed=3)
  assert ds.options().autotune.enabled is False  # see test_training_pipelines_do_not_autotune
  seen = 0
  for batch in ds:
    assert batch["features"].shape[1:] == (101, 39)
    for i, example_id in enumerate(batch["id"].numpy()):
      record = stored[example_id.decode()]
      expected = (record["values"] - np.array(stats["mean"])) / np.array(stats["std"])
      n = int(batch["num_frames"][i])
      assert n == len(expected)
      np.testing.assert_allclose(batch["features"][i, :n].numpy(), expected, atol=1e-3)
      assert int(batch["label"][i]) == record["label"]
      seen += 1
  assert seen == len(stored)


def test_pipeline_with_vtlp_alone_gives_the_stored_features_warped(context_records):
  """Every example's features are its stored clip's, warped by one of the factors."""
  config = quiet(vtlp_prob=1.0)
  augmenter = augment.Augmenter(config, SR, CLIP)
  metadata = records.load_metadata(context_records)
  stats = metadata.normalization["mfcc"]
  front_end = features.from_dict(metadata.formats["mfcc"].params)
  maps = [warp.channel_map(front_end, f) for f in augmenter.warp_factors]
  stored = read_records(context_records, "mfcc", "train")
  ds = data.make_dataset(context_records, "mfcc", "train", batch_size=8, training=True,
                         augmenter=augmenter, seed=3)
  used = set()
  for batch in ds.take(3):
    for i, example_id in enumerate(batch["id"].numpy()):
      values = stored[example_id.decode()]["values"]
      errors = [np.abs(batch["features"][i].numpy() - (values @ m - np.array(stats["mean"]))
                       / np.array(stats["std"])).max() for m in maps]
      assert min(errors) < 1e-3, errors
      used.add(int(np.argmin(errors)))
  assert len(used) > 2


def test_augmented_pipeline_is_a_function_of_the_seed(context_records):
  config = AugmentConfig(enabled=True)
  augmenter = data.make_augmenter(context_records, config, "train")
  assert augmenter.noise_kinds == ("coloured", "babble")

  def batches(seed_value):
    ds = data.make_dataset(context_records, "mfcc", "train", batch_size=8, training=True,
                           augmenter=augmenter, seed=seed_value)
    return [(b["id"].numpy(), b["features"].numpy()) for b in ds.take(2)]

  first, again, other = batches(11), batches(11), batches(12)
  for (ids_a, feats_a), (ids_b, feats_b) in zip(first, again):
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(feats_a, feats_b)
  assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, other))
  # And the views are augmented: not the stored clean features.
  stored = read_records(context_records, "mfcc", "train")
  stats = records.load_metadata(context_records).normalization["mfcc"]
  ids, feats = first[0]
  clean = np.stack([(stored[i.decode()]["values"] - np.array(stats["mean"])) /
                    np.array(stats["std"]) for i in ids])
  assert np.abs(feats - clean).max() > 0.1


def test_augmenter_needs_raw_records_with_context(synthetic_corpus, tmp_path):
  out = tmp_path / "mfcc_only"
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}",
             "--corpus=vivos", f"--out_dir={out}", "--splits=test", "--task=kws",
             "--stats_splits=none", "--formats=mfcc",
             f"--alignments={synthetic_corpus}/*/alignments.ctm",
             "--cores=1")
  augmenter = augment.Augmenter(quiet(), SR, CLIP)
  with pytest.raises(ValueError, match="--formats=raw"):
    data.make_dataset(str(out), "mfcc", "test", batch_size=4, training=True,
                      augmenter=augmenter)
  converted = records.load_metadata(str(out))
  raw = records.FormatInfo(dir="raw", dtype="int16", num_channels=1,
                           params={"format": "raw", "sample_rate": converted.sample_rate})
  no_context = dataclasses.replace(
      converted, formats=dict(converted.formats, raw=raw),
      params=dataclasses.replace(converted.params, context_seconds=0.0))
  with pytest.raises(ValueError, match="--context_seconds"):
    data.check_context(no_context, "somewhere")


def test_offset_windows_are_the_stored_clips_at_zero_and_moved_within_the_shift_range(
    context_records):
  """``data.offset_dataset``: at offset 0 the front end of the centred window is the
  converter's stored MFCC; at up to 0.3 s every window is the raw context cut at an
  offset within the record's shift range, the same on every run."""
  metadata = records.load_metadata(context_records)
  front_end = data.WaveformFrontEnd.of_records(metadata, "mfcc", normalize=False)
  stored = read_records(context_records, "mfcc", "test")
  centred_batches = data.offset_dataset(context_records, "test", front_end, 0.0, 0, 16)
  for batch in centred_batches:
    for example_id, values in zip(batch["id"].numpy(), batch["features"].numpy()):
      np.testing.assert_allclose(values, stored[example_id.decode()]["values"], atol=2e-3)

  raw = read_records(context_records, "raw", "test")
  identity = lambda w: w[:, :, tf.newaxis]  # windows as [batch, samples, 1]
  window = int(CLIP * SR)
  moved = [b for b in data.offset_dataset(context_records, "test", identity, 0.3, 1, 16)]
  again = [b for b in data.offset_dataset(context_records, "test", identity, 0.3, 1, 16)]
  offsets = []
  for batch, repeat in zip(moved, again):
    np.testing.assert_array_equal(batch["features"].numpy(), repeat["features"].numpy())
    for example_id, values in zip(batch["id"].numpy(), batch["features"].numpy()[..., 0]):
      record = raw[example_id.decode()]
      context = record["values"].astype(np.float32) / 32768.0
      centred_start = (len(context) - window) // 2
      starts = [s for s in range(len(context) - window + 1)
                if np.array_equal(context[s:s + window], values)]
      assert starts, f"{example_id} is not a stretch of its context"
      offset = (starts[0] - centred_start) / SR
      low, high = record["shift_range"]
      assert max(low, -0.3) - 1e-3 <= offset <= min(high, 0.3) + 1e-3
      offsets.append(offset)
  assert np.std(offsets) > 0.05  # moved, and not all alike
