"""kws_tf.models.ctranslate2_whisper and data_prep.get_whisper_base.

Three kinds of checks:

* The parser on hand-made ``model.bin`` files (``write_model_bin`` below
  writes the layout of CTranslate2's ``ModelSpec._serialize``): float32,
  float16 and bfloat16 variables, int8 / int16 quantized ones, aliases, and
  the errors (unknown spec, revision or binary version, missing, unexpected or
  misshapen variables, truncation, AWQ). No ctranslate2 needed.
* Tiny Whisper models written by ctranslate2's own converter (its
  ``WhisperLoader`` on a random transformers model, then ``spec.save``) in
  each quantization: our encoder matches ``ctranslate2.models.Whisper.encode``
  (C++, compute type float32) within ``TINY_PARITY``, and our writer
  reproduces the file byte for byte.
* The real OpenAI Whisper base from the PyPI packages (assembled by
  ``kws-get-whisper-base``): our Keras encoder against CTranslate2's encoder
  on the same 30 s log-mel window (``LogMelConfig(pad_to_seconds=30)``), on
  real English speech (Debian ``pocketsphinx-testdata``) and on synthetic
  Vietnamese speech (espeak-ng), or a generated waveform without espeak.

The bound for the real model. Both sides compute in float32 from the same
float16 weights (CTranslate2 on a CPU converts float16 weights to float32;
we ask for ``compute_type="float32"`` explicitly), so the difference is
float32 rounding in a different order through 6 blocks, not weight precision.
Measured here on 12 inputs (5 LibriVox clips, 2 "cards" clips, 3 espeak
Vietnamese sentences, a chirp with noise, a 24.7 s concatenation): max
absolute difference 4.1e-4 .. 1.06e-3 with outputs reaching |23.5 .. 24.5|,
i.e. at most 4.4e-5 of the largest output (relative L2 difference <= 3.1e-6).
Bound held: max absolute difference <= 5e-3 and <= 2e-4 of max |output|, 4.5x
above the worst measurement and still below float16's unit roundoff (4.9e-4):
the two encoders agree more closely than the float16 weights themselves are
resolved.
"""
import glob
import importlib.util
import os
import struct

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest

from conftest import run_module
from data_prep import whisper_base as base_lib
from kws_tf.models import ctranslate2_whisper as cw
from kws_tf.models import whisper

MAX_ABS = 5e-3        # real Whisper base vs CTranslate2: max |ours - theirs|
MAX_REL = 2e-4        # ... divided by max |theirs|
TINY_PARITY = 1e-5    # tiny spec-written models vs CTranslate2 (measured 1.4e-6)
WINDOW_SECONDS = 30
LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"

HAVE_CT2 = importlib.util.find_spec("ctranslate2") is not None
needs_ct2 = pytest.mark.skipif(
    not HAVE_CT2, reason="ctranslate2 is not installed (it is a test dependency: "
    "pip install -e .[test])")

# ---------------------------------------------------------------------------
# A hand-made model.bin: the layout of ctranslate2's ModelSpec._serialize.

_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4,
             "bfloat16": 5}
_STORED = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4",
           "float16": "<f2", "bfloat16": "<u2"}


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
  """uint16 bfloat16 patterns of float32 ``x`` (truncated: exact for values made by it)."""
  return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def write_model_bin(path, variables, aliases=(), spec="WhisperSpec", revision=3,
                    version=6):
  """Writes ``variables`` ``{name: (dtype, array)}`` and ``aliases`` ``[(alias, target)]``.

  Variables in name order, as ctranslate2 writes them; bfloat16 arrays are
  given as their uint16 bit patterns.
  """

  def string(text):
    data = text.encode("utf-8")
    return struct.pack("<H", len(data) + 1) + data + b"\0"

  out = [struct.pack("<I", version)]
  if version >= 2:
    out += [string(spec), struct.pack("<I", revision)]
  out.append(struct.pack("<I", len(variables)))
  for name, (dtype, array) in sorted(variables.items()):
    data = np.ascontiguousarray(array, dtype=_STORED[dtype]).tobytes()
    out += [string(name), struct.pack("<B", np.ndim(array)),
            b"".join(struct.pack("<I", d) for d in np.shape(array)),
            struct.pack("<B", _TYPE_IDS[dtype]), struct.pack("<I", len(data)), data]
  if version >= 3:
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases:
      out += [string(alias), string(target)]
  with open(path, "wb") as f:
    f.write(b"".join(out))


D, HEADS, LAYERS, FFN, MELS, POSITIONS = 16, 2, 2, 32, 80, 20


def tiny_variables(seed=0):
  """A random tiny Whisper encoder in CTranslate2 names and layouts, float32.

  Values are float16-representable, so storing them in float16 is exact.
  Includes ``encoder/num_heads`` and a decoder variable.
  """
  rng = np.random.default_rng(seed)

  def rand(*shape):
    return rng.standard_normal(shape).astype(np.float16).astype(np.float32) * 0.5

  v = {"encoder/conv1/weight": rand(D, MELS, 3), "encoder/conv1/bias": rand(D),
       "encoder/conv2/weight": rand(D, D, 3), "encoder/conv2/bias": rand(D),
       "encoder/position_encodings/encodings": rand(POSITIONS, D),
       "encoder/layer_norm/gamma": rand(D), "encoder/layer_norm/beta": rand(D),
       "decoder/embeddings/weight": rand(7, D)}
  for i in range(LAYERS):
    p = f"encoder/layer_{i}/"
    bias = rand(3 * D)
    bias[D:2 * D] = 0.0  # Whisper's k projection has no bias
    v.update({p + "self_attention/layer_norm/gamma": rand(D),
              p + "self_attention/layer_norm/beta": rand(D),
              p + "self_attention/linear_0/weight": rand(3 * D, D),
              p + "self_attention/linear_0/bias": bias,
              p + "self_attention/linear_1/weight": rand(D, D),
              p + "self_attention/linear_1/bias": rand(D),
              p + "ffn/layer_norm/gamma": rand(D), p + "ffn/layer_norm/beta": rand(D),
              p + "ffn/linear_0/weight": rand(FFN, D), p + "ffn/linear_0/bias": rand(FFN),
              p + "ffn/linear_1/weight": rand(D, FFN), p + "ffn/linear_1/bias": rand(D)})
  return v


def as_float32_file(values):
  out = {name: ("float32", value) for name, value in values.items()}
  out["encoder/num_heads"] = ("int16", np.array(HEADS, np.int16))
  return out


def write_tiny(directory, variables=None, **kwargs):
  os.makedirs(directory, exist_ok=True)
  write_model_bin(os.path.join(directory, "model.bin"),
                  variables if variables is not None else as_float32_file(tiny_variables()),
                  **kwargs)
  with open(os.path.join(directory, "config.json"), "w") as f:
    f.write('{"suppress_ids": [], "lang_ids": []}\n')
  return str(directory)


def assert_weights(encoder, values):
  """The Keras weights of ``encoder`` hold ``values`` (CTranslate2 names and layouts)."""
  np.testing.assert_array_equal(encoder.conv1.kernel.numpy(),
                                values["encoder/conv1/weight"].T)
  np.testing.assert_array_equal(encoder.conv2.bias.numpy(), values["encoder/conv2/bias"])
  np.testing.assert_array_equal(encoder.embed_positions.numpy(),
                                values["encoder/position_encodings/encodings"])
  np.testing.assert_array_equal(encoder.layer_norm.gamma.numpy(),
                                values["encoder/layer_norm/gamma"])
  for i, block in enumerate(encoder.blocks):
    p = f"encoder/layer_{i}/"
    qkv = values[p + "self_attention/linear_0/weight"]
    qkv_bias = values[p + "self_attention/linear_0/bias"]
    attention = block.self_attn
    np.testing.assert_array_equal(attention.q_proj.kernel.numpy(), qkv[:D].T)
    np.testing.assert_array_equal(attention.k_proj.kernel.numpy(), qkv[D:2 * D].T)
    np.testing.assert_array_equal(attention.v_proj.kernel.numpy(), qkv[2 * D:].T)
    np.testing.assert_array_equal(attention.q_proj.bias.numpy(), qkv_bias[:D])
    np.testing.assert_array_equal(attention.v_proj.bias.numpy(), qkv_bias[2 * D:])
    np.testing.assert_array_equal(attention.out_proj.kernel.numpy(),
                                  values[p + "self_attention/linear_1/weight"].T)
    np.testing.assert_array_equal(block.self_attn_layer_norm.beta.numpy(),
                                  values[p + "self_attention/layer_norm/beta"])
    np.testing.assert_array_equal(block.final_layer_norm.gamma.numpy(),
                                  values[p + "ffn/layer_norm/gamma"])
    np.testing.assert_array_equal(block.fc1.kernel.numpy(), values[p + "ffn/linear_0/weight"].T)
    np.testing.assert_array_equal(block.fc2.bias.numpy(), values[p + "ffn/linear_1/bias"])


# ---------------------------------------------------------------------------
# The parser on hand-made files.

def test_reads_float16_bfloat16_float32_and_aliases(tmp_path):
  values = tiny_variables()
  # Layer 1's ffn layer norm equals layer 0's; conv2's bias equals a decoder
  # variable's row: stored once, aliased, as ctranslate2 does.
  values["encoder/layer_1/ffn/layer_norm/gamma"] = values["encoder/layer_0/ffn/layer_norm/gamma"]
  stored = {}
  for name, value in values.items():
    if name.endswith("layer_norm/beta"):
      value = (bfloat16_bits(value).astype(np.uint32) << 16).view(np.float32)
      values[name] = value
      stored[name] = ("bfloat16", bfloat16_bits(value))
    elif name.startswith("encoder/layer_"):
      stored[name] = ("float16", value.astype(np.float16))
    else:
      stored[name] = ("float32", value)
  stored["encoder/num_heads"] = ("int16", np.array(HEADS, np.int16))
  del stored["encoder/layer_1/ffn/layer_norm/gamma"]
  stored["decoder/tied"] = ("float32", values["encoder/conv2/bias"])
  del stored["encoder/conv2/bias"]
  aliases = [("encoder/layer_1/ffn/layer_norm/gamma", "encoder/layer_0/ffn/layer_norm/gamma"),
             ("encoder/conv2/bias", "decoder/tied")]
  directory = write_tiny(tmp_path / "ct2", stored, aliases=aliases)

  model = cw.read_model_bin(directory)
  assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
  assert model.aliases == dict(aliases)
  assert model.info("encoder/layer_0/ffn/linear_0/weight").dtype == "float16"
  assert model.info("encoder/layer_0/ffn/layer_norm/beta").dtype == "bfloat16"
  assert cw.config_from_model(model) == whisper.encoder_config(
      {"num_mel_bins": MELS, "d_model": D, "encoder_layers": LAYERS,
       "encoder_attention_heads": HEADS, "encoder_ffn_dim": FFN,
       "max_source_positions": POSITIONS})
  encoder = whisper.load_ctranslate2_encoder(directory, name="encoder")
  assert encoder.name == "encoder"
  assert_weights(encoder, values)
  # The encoder runs on any window up to 2 * POSITIONS frames.
  out = encoder(np.zeros([1, 2 * POSITIONS, MELS], np.float32))["last_hidden_state"]
  assert out.shape == (1, POSITIONS, D)


def test_int8_and_int16_weights_are_dequantized_with_their_scales(tmp_path):
  values = tiny_variables()
  stored = as_float32_file(values)
  rng = np.random.default_rng(1)
  # int8: one scale per row (a conv weight [out, in, k] is scaled per out row).
  for name in ("encoder/conv1/weight", "encoder/layer_0/ffn/linear_0/weight"):
    q = rng.integers(-127, 128, values[name].shape).astype(np.int8)
    scale = rng.uniform(50, 200, values[name].shape[0]).astype(np.float32)
    stored[name] = ("int8", q)
    stored[name + "_scale"] = ("float32", scale)
    values[name] = q.reshape(len(scale), -1).astype(np.float32) / scale[:, None]
    values[name] = values[name].reshape(q.shape)
  # int16: one scale for the weight.
  qkv = "encoder/layer_1/self_attention/linear_0/weight"
  q = rng.integers(-1000, 1000, values[qkv].shape).astype(np.int16)
  stored[qkv] = ("int16", q)
  stored[qkv + "_scale"] = ("float32", np.array(512.0, np.float32))
  values[qkv] = q.astype(np.float32) / np.float32(512.0)
  encoder = whisper.load_ctranslate2_encoder(write_tiny(tmp_path / "ct2", stored))
  np.testing.assert_allclose(encoder.conv1.kernel.numpy(),
                             values["encoder/conv1/weight"].T, rtol=1e-6)
  np.testing.assert_allclose(encoder.blocks[0].fc1.kernel.numpy(),
                             values["encoder/layer_0/ffn/linear_0/weight"].T, rtol=1e-6)
  np.testing.assert_allclose(encoder.blocks[1].self_attn.k_proj.kernel.numpy(),
                             values[qkv][D:2 * D].T, rtol=1e-6)


def test_unknown_spec_name_revision_and_binary_version_are_refused(tmp_path):
  variables = as_float32_file(tiny_variables())
  for kwargs, message in (({"spec": "TransformerSpec"}, "TransformerSpec model"),
                          ({"revision": 4}, "WhisperSpec revision 4 is not supported"),
                          ({"version": 7}, "binary version 7")):
    directory = write_tiny(tmp_path / str(len(message)), variables, **kwargs)
    with pytest.raises(cw.CTranslate2FormatError, match=message):
      whisper.load_ctranslate2_encoder(directory)


def test_missing_unexpected_and_misshapen_variables_are_listed(tmp_path):
  variables = as_float32_file(tiny_variables())
  del variables["encoder/layer_1/ffn/linear_1/bias"]
  del variables["encoder/layer_norm/gamma"]
  variables["encoder/layer_0/self_attention/queries_scale"] = ("float32", np.float32(1.0))
  variables["encoder/layer_0/ffn/linear_1/weight"] = ("float32", np.zeros([D, FFN + 1], np.float32))
  with pytest.raises(cw.CTranslate2FormatError) as error:
    whisper.load_ctranslate2_encoder(write_tiny(tmp_path / "ct2", variables))
  message = str(error.value)
  assert ("missing variables ['encoder/layer_1/ffn/linear_1/bias', "
          "'encoder/layer_norm/gamma']") in message
  assert "unexpected variables ['encoder/layer_0/self_attention/queries_scale']" in message
  assert (f"wrong shapes ['encoder/layer_0/ffn/linear_1/weight ({D}, {FFN + 1}) "
          f"(expected ({D}, {FFN}))']") in message


def test_truncated_files_unscaled_int8_and_awq_are_refused(tmp_path):
  directory = write_tiny(tmp_path / "truncated")
  path = tmp_path / "truncated" / "model.bin"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(cw.CTranslate2FormatError, match="truncated"):
    cw.read_model_bin(directory)
  path.write_bytes(data + b"\0\0")
  with pytest.raises(cw.CTranslate2FormatError, match="2 unexpected bytes"):
    cw.read_model_bin(directory)

  variables = as_float32_file(tiny_variables())
  variables["encoder/conv2/weight"] = ("int8", np.ones([D, D, 3], np.int8))
  with pytest.raises(cw.CTranslate2FormatError, match="encoder/conv2/weight_scale is missing"):
    whisper.load_ctranslate2_encoder(write_tiny(tmp_path / "unscaled", variables))
  variables["encoder/conv2/weight_scale"] = ("float32", np.ones([D], np.float32))
  variables["encoder/conv2/weight_zero"] = ("float32", np.ones([D], np.float32))
  with pytest.raises(cw.CTranslate2FormatError, match="AWQ"):
    whisper.load_ctranslate2_encoder(write_tiny(tmp_path / "awq", variables))


def test_checkpoint_dispatch_takes_ctranslate2_and_hugging_face_dirs(tmp_path):
  values = tiny_variables()
  directory = write_tiny(tmp_path / "ct2")
  assert cw.is_ctranslate2_dir(directory)
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text('{"model_type": "whisper"}')
  (hf / "model.safetensors").write_bytes(b"")
  assert not cw.is_ctranslate2_dir(hf)
  other = tmp_path / "other"
  other.mkdir()
  (other / "model.bin").write_bytes(b"PK\3\4 not a ctranslate2 model")
  assert not cw.is_ctranslate2_dir(other)
  assert not cw.is_ctranslate2_dir(tmp_path / "absent")

  assert whisper.encoder_config(directory)["encoder_attention_heads"] == HEADS
  assert_weights(whisper.load_encoder(directory), values)

  from kws_tf.models import teacher
  model = teacher.whisper_teacher(task="kws", num_channels=MELS, num_classes=3,
                                  checkpoint=directory, hidden_sizes=(8, 4))
  encoder = model.get_layer("encoder")
  assert_weights(encoder, values)
  assert not encoder.trainable  # a checkpoint teacher's encoder is frozen by default


def test_parts_are_joined_in_order_and_missing_packages_are_explained(tmp_path, monkeypatch):
  first, second = tmp_path / "a", tmp_path / "b"
  first.mkdir()
  second.mkdir()
  (first / "model.bin.part1").write_bytes(b"one")
  (second / "model.bin.part2").write_bytes(b"two")
  (second / "config.json").write_bytes(b"{}")
  files = base_lib.source_files([str(second), str(first)])
  assert files == {"model.bin": [str(first / "model.bin.part1"), str(second / "model.bin.part2")],
                   "config.json": [str(second / "config.json")]}
  (second / "model.bin.part2").rename(second / "model.bin.part3")
  with pytest.raises(base_lib.WhisperBaseError, match=r"parts of model.bin are \[1, 3\]"):
    base_lib.source_files([str(first), str(second)])

  monkeypatch.setattr(base_lib, "PACKAGES", ("kws_tf_no_such_package_1",))
  with pytest.raises(base_lib.WhisperBaseError, match=r"pip install -e \.\[whisper-base\]"):
    base_lib.assemble(str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# Tiny models written by ctranslate2's own converter.

QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float16", "int16")


@pytest.fixture(scope="module")
def spec_written(tmp_path_factory):
  """``{quantization: directory}`` of one tiny random Whisper saved by ctranslate2."""
  pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (a test "
                      "dependency: pip install -e .[test])")
  import torch
  from ctranslate2.converters.transformers import WhisperLoader
  from transformers import WhisperConfig, WhisperForConditionalGeneration

  config = WhisperConfig(
      d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
      decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
      num_mel_bins=MELS, vocab_size=100, max_source_positions=150,
      max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
      decoder_start_token_id=3)
  tokens = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
  tokens += [f"token{i}" for i in range(config.vocab_size - len(tokens))]
  root = tmp_path_factory.mktemp("ct2_tiny")
  directories = {}
  for quantization in QUANTIZATIONS:
    # A fresh model each time: ctranslate2's int8 quantization scales the
    # torch weights in place.
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # layer norms away from 1 / 0 (those would all alias)
      for name, parameter in model.named_parameters():
        if "layer_norm" in name and "encoder.layers.1" in name:
          parameter.add_(0.1 * torch.randn_like(parameter))
    spec = WhisperLoader().get_model_spec(model)
    spec.config.suppress_ids, spec.config.suppress_ids_begin = [], []
    spec.config.lang_ids, spec.config.alignment_heads = [], [[0, 0]]
    spec.register_vocabulary(tokens)
    spec.validate()
    spec.optimize(quantization=quantization)
    directory = root / quantization
    directory.mkdir()
    spec.save(str(directory))
    directories[quantization] = str(directory)
  return directories


def ctranslate2_encode(directory, features):
  """CTranslate2's encoder output (C++, float32 compute) for ``[batch, frames, mels]``."""
  import ctranslate2

  model = ctranslate2.models.Whisper(directory, device="cpu", compute_type="float32",
                                     intra_threads=2)
  storage = ctranslate2.StorageView.from_array(
      np.ascontiguousarray(np.transpose(features, [0, 2, 1])))
  return np.asarray(model.encode(storage, to_cpu=True)).astype(np.float32)


@needs_ct2
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_spec_written_models_match_ctranslate2(spec_written, quantization):
  directory = spec_written[quantization]
  model = cw.read_model_bin(directory)
  assert model.aliases  # zero biases and equal layer norms are aliased
  encoder_dtypes = {info.dtype for name, info in model.variables.items()
                    if name.startswith("encoder/") and name.endswith("weight")}
  assert encoder_dtypes == {"bfloat16" if quantization == "bfloat16" else
                            "float16" if quantization == "float16" else
                            "int8" if quantization.startswith("int8") else
                            "int16" if quantization == "int16" else "float32"}

  # Our writer reproduces ctranslate2's file byte for byte.
  rewritten = os.path.join(os.path.dirname(directory), f"{quantization}.rewritten.bin")
  write_model_bin(rewritten, {name: (info.dtype, model.array(name))
                              for name, info in model.variables.items()},
                  aliases=list(model.aliases.items()), spec=model.spec_name,
                  revision=model.spec_revision, version=model.binary_version)
  with open(rewritten, "rb") as ours, open(os.path.join(directory, "model.bin"), "rb") as theirs:
    assert ours.read() == theirs.read()

  features = np.random.default_rng(0).standard_normal([2, 300, MELS]).astype(np.float32)
  encoder = whisper.load_encoder(directory)
  ours = encoder(features)["last_hidden_state"].numpy()
  theirs = ctranslate2_encode(directory, features)
  assert ours.shape == theirs.shape == (2, 150, 64)
  assert np.abs(ours - theirs).max() < TINY_PARITY


# ---------------------------------------------------------------------------
# The real Whisper base.

@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory):
  """The directory that ``kws-get-whisper-base`` assembles from the PyPI packages."""
  if importlib.util.find_spec(base_lib.PACKAGES[0]) is None or \
      importlib.util.find_spec(base_lib.PACKAGES[1]) is None:
    pytest.skip("the Whisper base packages are not installed: "
                + whisper_base.INSTALL_HINT)
  out = tmp_path_factory.mktemp("whisper_base") / "whisper-base"
  result = run_module("data_prep.get_whisper_base", f"--out_dir={out}")
  assert f"written: {out}" in result.stdout
  assert sorted(os.listdir(out)) == sorted(base_lib.EXPECTED_FILES)
  assert not glob.glob(str(out) + ".tmp-*") and not glob.glob(str(out.parent / ".*"))
  again = run_module("data_prep.get_whisper_base", f"--out_dir={out}")
  assert "already there, checked" in again.stdout
  return str(out)


@pytest.fixture(scope="module")
def whisper_base_encoders(whisper_base):
  """(our Keras encoder, a function giving CTranslate2's encoder output)."""
  pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (a test "
                      "dependency: pip install -e .[test])")
  import ctranslate2

  encoder = whisper.load_encoder(whisper_base)
  reference = ctranslate2.models.Whisper(whisper_base, device="cpu",
                                         compute_type="float32", intra_threads=2)

  def theirs(features):
    storage = ctranslate2.StorageView.from_array(
        np.ascontiguousarray(np.transpose(features, [0, 2, 1])))
    return np.asarray(reference.encode(storage, to_cpu=True)).astype(np.float32)

  return encoder, theirs


def assert_parity(encoders, waveform, label):
  from kws_tf.features import LogMelConfig

  encoder, theirs = encoders
  features = LogMelConfig(pad_to_seconds=WINDOW_SECONDS)(waveform).numpy()[np.newaxis]
  assert features.shape == (1, 3000, 80)
  ours = encoder(features)["last_hidden_state"].numpy()
  reference = theirs(features)
  assert ours.shape == reference.shape == (1, 1500, 512)
  max_abs = float(np.abs(ours - reference).max())
  relative = max_abs / float(np.abs(reference).max())
  print(f"\n{label}: max abs difference {max_abs:.2e}, relative to max |output| "
        f"{relative:.2e} (bounds {MAX_ABS:.0e}, {MAX_REL:.0e})")
  assert max_abs <= MAX_ABS and relative <= MAX_REL, (label, max_abs, relative)


def test_whisper_base_matches_ctranslate2_on_real_speech(whisper_base_encoders):
  if not os.path.isfile(LIBRIVOX):
    pytest.skip(f"no real speech: {LIBRIVOX} is missing (Debian package "
                "pocketsphinx-testdata: apt-get install pocketsphinx-testdata)")
  import soundfile
  import soxr

  waveform, rate = soundfile.read(LIBRIVOX, dtype="float32")
  if rate != 16000:
    waveform = soxr.resample(waveform, rate, 16000)
  assert_parity(whisper_base_encoders, waveform, "LibriVox clip (real English speech)")


def test_whisper_base_matches_ctranslate2_on_synthetic_speech(whisper_base_encoders):
  import soxr

  try:
    from data_prep import espeak
    synthesis = espeak.synthesize("xin chào các bạn hôm nay trời đẹp quá",
                                  espeak.Voice("vi+m1"))
    waveform = soxr.resample(synthesis.samples.astype(np.float32) / 32768.0,
                             espeak.SAMPLE_RATE, 16000)
    label = "espeak-ng Vietnamese (synthetic speech)"
  except Exception as error:  # noqa: BLE001  (no libespeak-ng: a generated waveform)
    print(f"espeak-ng unavailable ({error}); using a generated waveform")
    t = np.arange(5 * 16000) / 16000
    rng = np.random.default_rng(0)
    waveform = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)
                + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    label = "chirp with noise (generated waveform)"
  assert_parity(whisper_base_encoders, waveform, label)
