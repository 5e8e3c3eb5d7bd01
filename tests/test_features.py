"""kws_tf.features against references this project did not write.

References: librosa (STFT, mel spectrogram, power_to_db, MFCC, delta) and
transformers' WhisperFeatureExtractor (Whisper's log-mel). References run in
float64 (librosa) or PyTorch float32 (the extractor); our features are
float32, so every comparison carries an explicit error bound.

Signals, 16 kHz: a chirp with noise and a near-silent stretch (exercises the
dB and log clamps), and a Vietnamese sentence from espeak-ng (synthetic
speech) when the espeak-ng binary is installed.

Zero-padded batches of different lengths are checked against single-example
calls (which the references check).
"""
import io
import json
import pickle
import shutil
import subprocess

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from transformers import WhisperFeatureExtractor

from kws_tf import features

SAMPLE_RATE = 16000
SENTENCE = "Xin chào, hôm nay trời rất đẹp và tôi muốn đi chơi với bạn."


def chirp(seconds: float, seed: int = 0) -> np.ndarray:
  """float32 [samples]: a 100 Hz -> 5 kHz chirp, noise, one quiet stretch."""
  rng = np.random.default_rng(seed)
  t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  rate = (5000.0 - 100.0) / (2.0 * seconds)
  y = 0.5 * np.sin(2.0 * np.pi * (100.0 * t + rate * t ** 2))
  y += 0.05 * rng.standard_normal(t.size)
  quiet = slice(len(y) // 3, len(y) // 3 + SAMPLE_RATE // 4)
  y[quiet] *= 1e-3
  return y.astype(np.float32)


def espeak_sentence() -> np.ndarray:
  """float32 [samples]: SENTENCE spoken by espeak-ng (voice vi) at 16 kHz."""
  if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed")
  wav = subprocess.run(["espeak-ng", "-v", "vi", "--stdout", SENTENCE],
                       check=True, capture_output=True).stdout
  y, rate = soundfile.read(io.BytesIO(wav), dtype="float64")
  return librosa.resample(y, orig_sr=rate, target_sr=SAMPLE_RATE).astype(
      np.float32)


@pytest.fixture(scope="module", params=["chirp", "speech"])
def signal(request) -> np.ndarray:
  if request.param == "chirp":
    return chirp(2.3)
  return espeak_sentence()


def librosa_power(y: np.ndarray, center: bool,
                  win_length: int = 512) -> np.ndarray:
  """[frames, 257] |STFT|^2 in float64."""
  stft = librosa.stft(y.astype(np.float64), n_fft=512, hop_length=160,
                      win_length=win_length, window="hann", center=center,
                      pad_mode="reflect")
  return (np.abs(stft) ** 2).T


@pytest.mark.parametrize("center,frame_length",
                         [(True, 512), (False, 512), (True, 400)])
def test_power_matches_librosa(signal, center, frame_length):
  ours = features.PowerConfig(center=center, frame_length=frame_length)(
      signal).numpy()
  reference = librosa_power(signal, center, frame_length)
  assert ours.shape == reference.shape
  error = np.abs(ours - reference).max() / reference.max()
  assert error < 2e-6, f"max |error| / max power = {error:.2e}, bound 2e-6"


def test_log_power_matches_librosa(signal):
  ours = features.PowerConfig(log=True)(signal).numpy()
  reference = np.log(librosa_power(signal, center=True) + 1e-6)
  error = np.abs(ours - reference).max()
  assert error < 5e-3, f"max |error| = {error:.2e} nepers, bound 5e-3"


# The default, and a cheaper KWS front end (25 ms windows every 20 ms, a
# 400-point DFT, mel bands up to 4 kHz: the DFT stops at the highest bin the mel
# bank reads).
MFCC_CASES = {"default": {},
              "kws-student": dict(frame_length=400, fft_length=400, frame_step=320,
                                  upper_edge_hertz=4000.0)}


@pytest.mark.parametrize("dft", ["fft", "matmul"])
@pytest.mark.parametrize("case", list(MFCC_CASES))
def test_mfcc_matches_librosa(signal, case, dft):
  config = features.MfccConfig(dft=dft, **MFCC_CASES[case])
  ours = config(signal).numpy()
  mel = librosa.feature.melspectrogram(
      y=signal.astype(np.float64), sr=SAMPLE_RATE, n_fft=config.fft_length,
      hop_length=config.frame_step, win_length=config.frame_length, window="hann",
      center=True, pad_mode="reflect", power=2.0, n_mels=40, fmin=20.0,
      fmax=config.upper_edge_hertz, htk=False, norm="slaney")
  mfcc = librosa.feature.mfcc(
      S=librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0),
      n_mfcc=13, dct_type=2, norm="ortho")
  delta = librosa.feature.delta(mfcc, width=9, order=1, mode="nearest")
  delta2 = librosa.feature.delta(mfcc, width=9, order=2, mode="nearest")
  assert ours.shape == (mfcc.shape[1], 39)
  for name, block, reference, bound in [("mfcc", ours[:, :13], mfcc, 1e-3),
                                        ("delta", ours[:, 13:26], delta, 1e-4),
                                        ("delta2", ours[:, 26:], delta2, 1e-4)]:
    error = np.abs(block - reference.T).max()
    assert error < bound, f"{name}: max |error| = {error:.2e} dB, bound {bound}"


# The front end that streams layer by layer: no reflected samples, no clamp at the
# example's maximum, no deltas.
FRAME_LOCAL_MFCC = dict(center=False, top_db=None, delta_width=0)


@pytest.mark.parametrize("dft", ["fft", "matmul"])
def test_frame_local_mfcc_matches_librosa(signal, dft):
  config = features.MfccConfig(dft=dft, **FRAME_LOCAL_MFCC)
  ours = config(signal).numpy()
  mel = librosa.feature.melspectrogram(
      y=signal.astype(np.float64), sr=SAMPLE_RATE, n_fft=512, hop_length=160,
      win_length=512, window="hann", center=False, power=2.0, n_mels=40, fmin=20.0,
      fmax=8000.0, htk=False, norm="slaney")
  mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None),
                              n_mfcc=13, dct_type=2, norm="ortho")
  assert config.num_channels == 13 and ours.shape == (mfcc.shape[1], 13)
  error = np.abs(ours - mfcc.T).max()
  assert error < 2e-3, f"max |error| = {error:.2e} dB, bound 2e-3"


def test_frame_local_mfcc_frame_reads_only_its_own_samples():
  """Frame t of center=False, top_db=None, delta_width=0 is the same in any
  waveform that holds its samples at the same place on the frame grid: louder
  audio elsewhere (which moves the clamp of top_db) and the waveform's ends
  (reflected by center, replicated by the deltas) change nothing."""
  config = features.MfccConfig(frame_length=320, fft_length=320, frame_step=320,
                               **FRAME_LOCAL_MFCC)
  y = 0.01 * chirp(1.0, seed=2)
  loud = np.concatenate([chirp(0.4, seed=3)[:6400], y, chirp(0.4, seed=4)[:6400]])
  inside = config(loud).numpy()[20:20 + 50]
  np.testing.assert_allclose(inside, config(y).numpy(), rtol=0, atol=1e-4)
  # The librosa front end's frames there do depend on the rest.
  librosa_like = features.MfccConfig(frame_length=320, fft_length=320, frame_step=320)
  assert np.abs(librosa_like(loud).numpy()[20:71] - librosa_like(y).numpy()).max() > 1.0


def whisper_extractor() -> WhisperFeatureExtractor:
  return WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE)


PCEN_CASES = {
    "defaults": {},
    # The kws student's framing (configs/records_kws.yaml) with a faster smoother.
    "kws-student": dict(frame_length=320, fft_length=320, upper_edge_hertz=4000.0,
                        time_constant=0.1, gain=0.8, bias=10.0, power=0.25),
}


@pytest.mark.parametrize("case", list(PCEN_CASES))
def test_pcen_matches_librosa(signal, case):
  config = features.PcenConfig(**PCEN_CASES[case])
  mel = librosa.feature.melspectrogram(
      y=signal.astype(np.float64), sr=SAMPLE_RATE, n_fft=config.fft_length,
      hop_length=config.frame_step, win_length=config.frame_length, window="hann",
      center=True, pad_mode="reflect", power=2.0, n_mels=config.num_mel_bins,
      fmin=config.lower_edge_hertz, fmax=config.upper_edge_hertz, htk=False, norm="slaney")
  # The smoother starts at the first frame's level: librosa's zi for a steady input.
  s = config.smoothing()
  zi = scipy.signal.lfilter_zi([s], [1, s - 1]) * mel[:, :1]
  reference = librosa.pcen(mel, sr=SAMPLE_RATE, hop_length=config.frame_step,
                           gain=config.gain, bias=config.bias, power=config.power,
                           time_constant=config.time_constant, eps=config.eps, zi=zi).T
  ours = config(signal).numpy()
  assert ours.shape == reference.shape
  error = np.abs(ours - reference).max() / np.abs(reference).max()
  assert error < 1e-4, f"max |error| / max |PCEN| = {error:.2e}, bound 1e-4"


def test_pcen_takes_out_a_fixed_gain():
  # A sentence over a -60 dBFS noise floor (as a recording has), and 24 dB quieter.
  y = espeak_sentence()
  y = y + 1e-3 * np.random.default_rng(0).standard_normal(len(y)).astype(np.float32)
  quieter = y * np.float32(10 ** (-24 / 20))
  pcen = features.PcenConfig()
  loud, quiet = pcen(y).numpy(), pcen(quieter).numpy()
  # Every log-mel band moves by 24 dB; PCEN only by the gain control's
  # leftover, a factor (10^-2.4)^(1 - gain) = 0.9 inside the root.
  scale = np.abs(loud).max()
  assert np.median(np.abs(quiet - loud)) < 0.002 * scale
  assert np.percentile(np.abs(quiet - loud), 99) < 0.1 * scale
  log_mel = features.MfccConfig(num_mfcc=40, delta_width=0, top_db=None)
  shift = log_mel(y).numpy()[:, 0] - log_mel(quieter).numpy()[:, 0]  # c0: the mean level
  np.testing.assert_allclose(shift, 24 * np.sqrt(40), rtol=1e-3)


def test_logmel_30s_matches_whisper_extractor(signal):
  # Short input: zero-padded to 30 s. Input longer than 30 s: trimmed.
  longer = chirp(30.5, seed=1)
  config = features.LogMelConfig(pad_to_seconds=30.0)
  for y in (signal, longer):
    reference = whisper_extractor()(
        y, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0].T
    ours = config(y).numpy()
    assert ours.shape == reference.shape == (3000, 80)
    error = np.abs(ours - reference).max()
    assert error < 2e-4, f"max |error| = {error:.2e}, bound 2e-4"


def test_logmel_variable_length_matches_whisper_extractor(signal):
  # padding="longest" on one example pads nothing: the extractor runs its
  # STFT on the waveform as given (samples // 160 + 1 frames), drops the
  # last frame and takes the clamp maximum over what is left, as we do.
  reference = whisper_extractor()(
      signal, sampling_rate=SAMPLE_RATE, padding="longest",
      return_tensors="np").input_features[0].T
  config = features.LogMelConfig()
  ours = config(signal).numpy()
  assert reference.shape == ours.shape == (len(signal) // 160, 80)
  error = np.abs(ours - reference).max()
  assert error < 2e-4, f"max |error| = {error:.2e}, bound 2e-4"


@pytest.mark.filterwarnings("ignore:n_fft=512 is too large")
@pytest.mark.parametrize("num_samples", [1, 2, 3, 100, 256, 257, 700])
def test_short_waveforms_match_librosa(num_samples):
  # Centre padding longer than the waveform mirrors repeatedly (numpy.pad).
  y = np.random.default_rng(num_samples).standard_normal(num_samples).astype(
      np.float32)
  ours = features.PowerConfig()(y).numpy()
  reference = librosa_power(y, center=True)
  assert ours.shape == reference.shape
  error = np.abs(ours - reference).max() / reference.max()
  assert error < 2e-6, f"max |error| / max power = {error:.2e}, bound 2e-6"


def test_reflect_pad_of_a_batch_matches_numpy_pad():
  # Lengths below, at and above the pad: numpy mirrors repeatedly when the
  # pad is longer than the example.
  lengths = [1, 2, 5, 6, 7, 30]
  rng = np.random.default_rng(3)
  batch = rng.standard_normal((len(lengths), 32)).astype(np.float32)
  padded = features._reflect_pad(tf.constant(batch), tf.constant(lengths, tf.int32),
                                 6).numpy()
  assert padded.shape == (len(lengths), 32 + 12)
  for row, length in enumerate(lengths):
    expected = np.pad(batch[row, :length], 6, mode="reflect" if length > 1 else "edge")
    np.testing.assert_array_equal(padded[row, :length + 12], expected)


@pytest.mark.parametrize("config", [
    features.PowerConfig(), features.PowerConfig(frame_length=400),
    features.MfccConfig(), features.LogMelConfig()
], ids=["power", "power-short-window", "mfcc", "logmel"])
def test_matmul_dft_matches_fft(config):
  # The matrix DFT folds each frame into its even and odd halves; a window
  # shorter than the FFT sits in its centre and must stay symmetric.
  y = chirp(1.7, seed=2)
  fft = config(y).numpy()
  matmul = features.from_dict({**config.to_dict(), "dft": "matmul"})(y).numpy()
  error = np.abs(matmul - fft).max() / np.abs(fft).max()
  assert error < 1e-5, f"max |error| / max |feature| = {error:.2e}, bound 1e-5"


@pytest.mark.parametrize("lengths", [(401, 512), (400, 401)])
def test_matmul_dft_refuses_an_odd_frame(lengths):
  frame_length, fft_length = lengths
  with pytest.raises(ValueError, match="even fft_length and frame_length"):
    features.PowerConfig(frame_length=frame_length, fft_length=fft_length,
                         dft="matmul")


ALL_CONFIGS = [
    features.RawConfig(),
    features.PowerConfig(),
    features.PowerConfig(center=False, frame_length=400),
    features.MfccConfig(),
    features.LogMelConfig(),
    features.LogMelConfig(pad_to_seconds=1.5),
    features.PcenConfig(),
]
CONFIG_IDS = ["raw", "power", "power-uncentred", "mfcc", "logmel",
              "logmel-1.5s", "pcen"]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=CONFIG_IDS)
def test_num_frames_matches_output(config):
  for num_samples in (600, 1000, 16000, 16001, 16159, 16160, 32000):
    out = config(chirp(num_samples / SAMPLE_RATE))
    assert out.shape == (config.num_frames(num_samples), config.num_channels)
  assert config._single_function.experimental_get_tracing_count() == 1


def test_num_frames_conventions():
  assert features.PowerConfig().num_frames(16000) == 101
  assert features.MfccConfig().num_frames(48000) == 301
  assert features.PowerConfig(center=False).num_frames(16000) == 97
  assert features.LogMelConfig().num_frames(16000) == 100
  assert features.LogMelConfig(pad_to_seconds=30.0).num_frames(16000) == 3000


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=CONFIG_IDS)
def test_batch_equals_single_examples(config):
  batch = np.stack([chirp(1.2, seed=3), 0.3 * chirp(1.2, seed=4)])
  together = config(batch).numpy()
  assert together.shape == (2, config.num_frames(batch.shape[1]),
                            config.num_channels)
  for example, out in zip(batch, together):
    alone = config(example).numpy()
    error = np.abs(out - alone).max() / max(1.0, np.abs(alone).max())
    assert error < 1e-6, (
        f"max |error| / max(1, max |feature|) = {error:.2e}, bound 1e-6")


BATCH_CONFIGS = ALL_CONFIGS + [
    features.PowerConfig(log=True),
    features.MfccConfig(dft="matmul"),
    features.MfccConfig(**FRAME_LOCAL_MFCC),
    features.LogMelConfig(pad_to_seconds=30.0),
]
BATCH_IDS = CONFIG_IDS + ["log-power", "mfcc-matmul", "mfcc-frame-local", "logmel-30s"]


def uneven_signals() -> list:
  """Four float32 waveforms of different lengths.

  The longest sets the batch length; a 0.3 s one ends in a loud burst (its
  centre padding and delta edges must mirror that burst, not the padding); a
  quiet one has its clamps engaged (its maxima must not see the padding).
  """
  rng = np.random.default_rng(7)
  short = chirp(0.3, seed=5)
  short[-800:] = rng.uniform(-0.9, 0.9, 800)
  return [chirp(1.7, seed=3), chirp(2.1, seed=4), short,
          0.05 * chirp((SAMPLE_RATE + 77) / SAMPLE_RATE, seed=6)]


def padded_batch(signals: list, tail: str) -> tuple:
  """float32 ``[batch, max length]`` and int32 lengths ``[batch]``.

  After each signal: zeros (tail="zeros") or loud noise (tail="noise").
  """
  lengths = np.array([len(y) for y in signals], np.int32)
  rng = np.random.default_rng(8)
  if tail == "zeros":
    batch = np.zeros((len(signals), lengths.max()), np.float32)
  else:
    batch = rng.uniform(-1.0, 1.0, (len(signals), lengths.max())).astype(
        np.float32)
  for row, y in enumerate(signals):
    batch[row, :len(y)] = y
  return batch, lengths


@pytest.mark.parametrize("config", BATCH_CONFIGS, ids=BATCH_IDS)
def test_padded_batch_equals_single_examples(config):
  signals = uneven_signals()
  batch, lengths = padded_batch(signals, "zeros")
  together = config(batch, lengths).numpy()
  assert together.shape == (len(signals), config.num_frames(batch.shape[1]),
                            config.num_channels)
  num_frames = config.num_frames(tf.constant(lengths)).numpy()
  np.testing.assert_array_equal(
      num_frames, [config.num_frames(len(y)) for y in signals])
  for y, out, valid in zip(signals, together, num_frames):
    alone = config(y).numpy()
    assert alone.shape == (valid, config.num_channels)
    error = np.abs(out[:valid] - alone).max() / max(1.0, np.abs(alone).max())
    assert error < 1e-6, (
        f"max |error| / max(1, max |feature|) = {error:.2e}, bound 1e-6")
    assert not out[valid:].any(), "frames past the end must be zeros"
  assert config._batch_function.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("config", BATCH_CONFIGS, ids=BATCH_IDS)
def test_padding_values_change_no_valid_frame(config):
  # Loud noise instead of zeros after each example: had a valid frame read
  # the padding (centre padding, clamp maxima, delta edges), it would change.
  signals = uneven_signals()
  zeros = config(*padded_batch(signals, "zeros")).numpy()
  noise = config(*padded_batch(signals, "noise")).numpy()
  np.testing.assert_array_equal(noise, zeros)


@pytest.mark.parametrize("config", [features.MfccConfig(), features.LogMelConfig()],
                         ids=["mfcc", "logmel"])
def test_int16_samples_equal_their_float_waveform(config):
  rng = np.random.default_rng(5)
  pcm = rng.integers(-32768, 32768, (3, 8000), np.int16)
  lengths = np.array([8000, 5000, 333], np.int32)
  waveform = pcm / np.float32(32768)
  np.testing.assert_array_equal(config(pcm, lengths).numpy(),
                                config(waveform, lengths).numpy())
  np.testing.assert_array_equal(config(pcm[1, :5000]).numpy(),
                                config(waveform[1, :5000]).numpy())


def test_lengths_none_and_full_lengths_agree():
  config = features.MfccConfig()
  batch = np.stack([chirp(0.8, seed=9), chirp(0.8, seed=10)])
  full = np.full(2, batch.shape[1], np.int32)
  np.testing.assert_array_equal(config(batch).numpy(),
                                config(batch, full).numpy())
  assert config._batch_function.experimental_get_tracing_count() == 1


def test_bad_lengths_raise():
  config = features.MfccConfig()
  batch = np.zeros((2, 1000), np.float32)
  with pytest.raises(ValueError, match="lengths must be in"):
    config(batch, [1000, 1001])
  with pytest.raises(ValueError, match="lengths must be in"):
    config(batch, [0, 1000])
  with pytest.raises(ValueError, match="integer lengths"):
    config(batch, [1000.0, 1000.0])
  with pytest.raises(ValueError, match="integer lengths"):
    config(batch, [1000, 1000, 1000])
  with pytest.raises(ValueError, match="shape"):
    config(batch[0], [1000])


@pytest.mark.parametrize("config", [
    features.MfccConfig(dft="matmul"),
    features.MfccConfig(),
    features.MfccConfig(dft="matmul", **MFCC_CASES["kws-student"]),
    features.LogMelConfig(dft="matmul", pad_to_seconds=1.5),
    features.PcenConfig(dft="matmul", **PCEN_CASES["kws-student"]),
], ids=["mfcc", "mfcc-rfft", "mfcc-kws-student", "logmel-1.5s", "pcen-kws-student"])
def test_tflite_builtins_convert_padded_batches(config):
  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32),
                                tf.TensorSpec([None], tf.int32)])
  def model(waveform, lengths):
    return config(waveform, lengths)

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [model.get_concrete_function()], model)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  interpreter = Interpreter(model_content=converter.convert())
  batch, lengths = padded_batch(uneven_signals(), "zeros")
  inputs = {d["dtype"]: d["index"] for d in interpreter.get_input_details()}
  interpreter.resize_tensor_input(inputs[np.float32], batch.shape)
  interpreter.resize_tensor_input(inputs[np.int32], lengths.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(inputs[np.float32], batch)
  interpreter.set_tensor(inputs[np.int32], lengths)
  interpreter.invoke()
  ours = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  reference = config(batch, lengths).numpy()
  error = np.abs(ours - reference).max() / np.abs(reference).max()
  assert error < 1e-5, f"max |error| / max |feature| = {error:.2e}, bound 1e-5"


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=CONFIG_IDS)
def test_dict_round_trip(config):
  d = json.loads(json.dumps(config.to_dict()))
  assert d["format"] == config.format
  assert features.from_dict(d) == config
  assert features.default_config(config.format, **{
      k: v for k, v in d.items() if k != "format"}) == config


def test_pickle_keeps_fields_and_works_after_a_call():
  config = features.MfccConfig(num_mfcc=20)
  y = chirp(0.5)
  expected = config(y).numpy()
  copy = pickle.loads(pickle.dumps(config))
  assert copy == config
  np.testing.assert_array_equal(copy(y).numpy(), expected)


def test_formats_and_defaults():
  assert features.FORMATS == ("raw", "power", "mfcc", "logmel", "pcen")
  assert features.default_config("pcen").num_channels == 40
  assert features.default_config("mfcc").num_channels == 39
  assert features.default_config("power").num_channels == 257
  assert features.default_config("logmel", num_mel_bins=128).num_channels == 128
  assert features.default_config("raw").num_channels == 1


def test_bad_format_and_keys_raise():
  with pytest.raises(ValueError, match="'spectrum'"):
    features.from_dict({"format": "spectrum"})
  with pytest.raises(ValueError, match="None"):
    features.from_dict({"frame_step": 160})
  with pytest.raises(ValueError, match="hop_length"):
    features.from_dict({"format": "power", "hop_length": 160, "center": True})
  with pytest.raises(ValueError, match="n_mfcc"):
    features.default_config("mfcc", n_mfcc=13)
  with pytest.raises(ValueError, match="delta_width"):
    features.MfccConfig(delta_width=8)
  with pytest.raises(ValueError, match="delta_width must be 0"):
    features.MfccConfig(delta_width=1)
  with pytest.raises(ValueError, match="top_db must be None or > 0"):
    features.MfccConfig(top_db=0.0)
  with pytest.raises(ValueError, match="dft"):
    features.LogMelConfig(dft="dct")
  with pytest.raises(ValueError, match="power must be in"):
    features.PcenConfig(power=0.0)
  with pytest.raises(ValueError, match="bias must be > 0"):
    features.PcenConfig(bias=0.0)
  with pytest.raises(ValueError, match="time_constant"):
    features.PcenConfig(time_constant=-1.0)


def test_bad_inputs_raise():
  config = features.MfccConfig()
  with pytest.raises(ValueError, match="floating"):
    config(np.zeros(16000, np.int32))
  with pytest.raises(ValueError, match="shape"):
    config(np.zeros((1, 1, 16000), np.float32))


def test_works_inside_another_tf_function():
  config = features.LogMelConfig()

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
  def model(waveform):
    return tf.reduce_mean(config(waveform), axis=1)

  y = chirp(1.0)[None]
  np.testing.assert_allclose(model(y).numpy(),
                             config(y).numpy().mean(axis=1), atol=1e-6)
