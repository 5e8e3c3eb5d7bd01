"""kws_tf.models.whisper against transformers' own Whisper encoders.

References: transformers' PyTorch ``WhisperEncoder`` (eval mode) and its
TensorFlow ``TFWhisperModel`` (converted with ``from_pt=True``), on tiny
random checkpoints that transformers itself writes with ``save_pretrained``
(the file layout of ``vinai/PhoWhisper-*``). Every comparison of a float32
port with a float32 reference carries the bound ``PARITY``.

Our features are time first, ``[batch, frames, mels]``; transformers takes
``[batch, mels, frames]``, so inputs are transposed for the references.
"""
import os
import re
import shutil

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from transformers import (TFWhisperModel, WhisperConfig,
                          WhisperForConditionalGeneration, WhisperModel)

from kws_tf.models import whisper

PARITY = 1e-4       # float32 port vs float32 reference, max abs difference
MASKED = 1e-5       # padded batch vs the example alone, same port
MELS = 80
WINDOW = 3000       # 30 s of 10 ms frames: what transformers' encoder takes


def tiny_config() -> WhisperConfig:
  """A Whisper config small enough for fast tests, with Whisper's window."""
  return WhisperConfig(
      d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
      decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
      num_mel_bins=MELS, vocab_size=100, max_source_positions=1500,
      max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
      decoder_start_token_id=3)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """Tiny random checkpoints, each a directory as ``save_pretrained`` writes it.

  ``safetensors``: WhisperForConditionalGeneration (``model.encoder.*``);
  ``bin``: the same model as ``pytorch_model.bin``; ``sharded``: the same in
  safetensors shards with an index; ``whisper_model``: a WhisperModel
  (``encoder.*``) with other weights. ``torch``: the PyTorch encoder of each,
  in eval mode.
  """
  root = tmp_path_factory.mktemp("whisper")
  torch.manual_seed(0)
  generation = WhisperForConditionalGeneration(tiny_config()).eval()
  generation.save_pretrained(root / "safetensors")
  generation.save_pretrained(root / "bin", safe_serialization=False)
  generation.save_pretrained(root / "sharded", max_shard_size="300KB")
  torch.manual_seed(1)
  model = WhisperModel(tiny_config()).eval()
  model.save_pretrained(root / "whisper_model")
  kinds = {"safetensors": generation, "bin": generation, "sharded": generation,
           "whisper_model": model}
  return {**{kind: root / kind for kind in kinds},
          "torch": {kind: m.get_encoder() for kind, m in kinds.items()}}


def log_mel(batch: int, frames: int, seed: int = 0) -> np.ndarray:
  """float32 ``[batch, frames, mels]`` in the range of Whisper's log-mel."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-1.0, 1.5, size=(batch, frames, MELS)).astype(np.float32)


def torch_reference(encoder, features: np.ndarray):
  """Hidden states of transformers' PyTorch encoder for time-first ``features``.

  For 3000 frames the encoder's own forward; for fewer (which it refuses) its
  modules run in its order: conv1, GELU, conv2, GELU, the first positions,
  each layer, the final layer norm replacing the last state.
  """
  x = torch.from_numpy(features.transpose(0, 2, 1))
  with torch.no_grad():
    if features.shape[1] == WINDOW:
      states = encoder(x, output_hidden_states=True).hidden_states
      return [s.numpy() for s in states]
    h = torch.nn.functional.gelu(encoder.conv1(x))
    h = torch.nn.functional.gelu(encoder.conv2(h)).permute(0, 2, 1)
    h = h + encoder.embed_positions.weight[:h.shape[1]]
    states = [h]
    for layer in encoder.layers:
      h = layer(h, None, layer_head_mask=None)[0]
      states.append(h)
    states[-1] = encoder.layer_norm(h)
  return [s.numpy() for s in states]


def assert_states_close(outputs, reference, bound):
  """Every hidden state and the last one within ``bound`` of ``reference``."""
  states = [s.numpy() for s in outputs["hidden_states"]]
  assert len(states) == len(reference)
  for i, (ours, theirs) in enumerate(zip(states, reference)):
    assert ours.shape == theirs.shape, i
    assert np.abs(ours - theirs).max() <= bound, f"hidden state {i}"
  np.testing.assert_array_equal(outputs["last_hidden_state"].numpy(), states[-1])


@pytest.mark.parametrize("kind", ["safetensors", "bin", "sharded", "whisper_model"])
def test_matches_pytorch_on_30_s_window(checkpoints, kind):
  encoder = whisper.load_encoder(checkpoints[kind])
  features = log_mel(2, WINDOW)
  outputs = encoder(features)
  assert outputs["last_hidden_state"].shape == (2, 1500, 64)
  assert len(outputs["hidden_states"]) == 3  # embeddings + 2 layers
  assert_states_close(outputs, torch_reference(checkpoints["torch"][kind], features),
                      PARITY)


def test_matches_transformers_tensorflow(checkpoints):
  reference = TFWhisperModel.from_pretrained(checkpoints["safetensors"], from_pt=True)
  features = log_mel(2, WINDOW, seed=1)
  expected = reference.get_encoder()(tf.transpose(features, [0, 2, 1]),
                                     output_hidden_states=True)
  outputs = whisper.load_encoder(checkpoints["safetensors"])(features)
  assert_states_close(outputs, [s.numpy() for s in expected.hidden_states], PARITY)


@pytest.mark.parametrize("frames", [200, 151])
def test_matches_pytorch_on_trimmed_window(checkpoints, frames):
  encoder = whisper.load_encoder(checkpoints["safetensors"])
  features = log_mel(2, frames, seed=2)
  outputs = encoder(features)
  assert outputs["last_hidden_state"].shape == (2, whisper.output_frames(frames), 64)
  assert_states_close(
      outputs, torch_reference(checkpoints["torch"]["safetensors"], features), PARITY)


def test_trimmed_window_in_a_graph_with_unknown_length(checkpoints):
  encoder = whisper.load_encoder(checkpoints["safetensors"])
  run = tf.function(lambda x: encoder(x)["last_hidden_state"],
                    input_signature=[tf.TensorSpec([None, None, MELS], tf.float32)])
  features = log_mel(1, 100, seed=3)
  np.testing.assert_allclose(run(features), encoder(features)["last_hidden_state"],
                             atol=1e-6)
  with pytest.raises(tf.errors.InvalidArgumentError, match="at most 3000 frames"):
    run(log_mel(1, WINDOW + 2))


def test_more_than_30_s_is_an_error(checkpoints):
  encoder = whisper.load_encoder(checkpoints["safetensors"])
  with pytest.raises(ValueError, match="3002 input frames.*at most 3000"):
    encoder(log_mel(1, WINDOW + 2))


def test_bin_and_safetensors_give_identical_weights(checkpoints):
  from_bin = whisper.load_encoder(checkpoints["bin"]).get_weights()
  from_safetensors = whisper.load_encoder(checkpoints["safetensors"]).get_weights()
  assert len(from_bin) == len(from_safetensors) == 37
  for a, b in zip(from_bin, from_safetensors):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_safetensors_load_as_float32_weights(dtype, tmp_path):
  """A checkpoint saved in bf16 or f16 (PhoWhisper large ships so) loads as float32
  weights: exactly those of the float32 checkpoint rounded to that type, so the
  two encoders give identical outputs."""
  torch.manual_seed(2)
  model = WhisperForConditionalGeneration(tiny_config()).eval()
  model.to(dtype).save_pretrained(tmp_path / "half")
  # The same weights rounded to ``dtype``, saved back in float32.
  model.to(torch.float32).save_pretrained(tmp_path / "rounded")
  with safe_open(tmp_path / "half" / "model.safetensors", framework="numpy") as f:
    assert {f.get_slice(name).get_dtype() for name in f.keys()} == \
        {"BF16" if dtype == torch.bfloat16 else "F16"}

  tensors = whisper._read_tensors(str(tmp_path / "half"))
  assert {value.dtype for value in tensors.values()} == {np.dtype(np.float32)}
  rounded = whisper._read_tensors(str(tmp_path / "rounded"))
  assert tensors.keys() == rounded.keys()
  for name, value in tensors.items():
    np.testing.assert_array_equal(value, rounded[name], err_msg=name)
  features = log_mel(1, 200, seed=4)
  np.testing.assert_array_equal(
      whisper.load_encoder(tmp_path / "half")(features)["last_hidden_state"],
      whisper.load_encoder(tmp_path / "rounded")(features)["last_hidden_state"])


def edited_checkpoint(checkpoints, tmp_path, edit):
  """A copy of the safetensors checkpoint whose tensors ``edit`` changed."""
  out = tmp_path / "edited"
  out.mkdir()
  shutil.copy(checkpoints["safetensors"] / "config.json", out)
  tensors = load_file(checkpoints["safetensors"] / "model.safetensors")
  edit(tensors)
  save_file(tensors, out / "model.safetensors")
  return out


def test_decoder_tensors_are_ignored(checkpoints, tmp_path):
  def add_decoder_tensors(tensors):
    tensors["model.decoder.unknown.weight"] = np.zeros(3, np.float32)
    tensors["proj_out.weight"] = np.zeros((100, 64), np.float32)

  directory = edited_checkpoint(checkpoints, tmp_path, add_decoder_tensors)
  encoder = whisper.load_encoder(directory)
  expected = whisper.load_encoder(checkpoints["safetensors"])
  for a, b in zip(encoder.get_weights(), expected.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_missing_tensor_is_named(checkpoints, tmp_path):
  directory = edited_checkpoint(
      checkpoints, tmp_path, lambda t: t.pop("model.encoder.layers.1.fc2.bias"))
  with pytest.raises(ValueError, match=r"missing tensors \['model.encoder.layers.1."
                                       r"fc2.bias'\]; unexpected tensors none"):
    whisper.load_encoder(directory)


def test_unexpected_encoder_tensor_is_named(checkpoints, tmp_path):
  def add(tensors):
    tensors["model.encoder.layers.0.self_attn.k_proj.bias"] = np.zeros(64, np.float32)

  directory = edited_checkpoint(checkpoints, tmp_path, add)
  with pytest.raises(ValueError, match=r"missing tensors none; unexpected tensors "
                                       r"\['model.encoder.layers.0.self_attn.k_proj.bias'\]"):
    whisper.load_encoder(directory)


def test_shape_mismatch_is_named(checkpoints, tmp_path):
  def shrink(tensors):
    tensors["model.encoder.layers.0.fc1.weight"] = np.zeros((96, 64), np.float32)

  directory = edited_checkpoint(checkpoints, tmp_path, shrink)
  with pytest.raises(ValueError, match=r"model.encoder.layers.0.fc1.weight has shape "
                                       r"\(96, 64\); .* expects \(128, 64\)"):
    whisper.load_encoder(directory)


def test_missing_directory_config_or_weights_name_the_path(checkpoints, tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=f"{re.escape(str(missing))} does not exist"):
    whisper.load_encoder(missing)
  no_config = tmp_path / "no_config"
  no_config.mkdir()
  shutil.copy(checkpoints["safetensors"] / "model.safetensors", no_config)
  with pytest.raises(FileNotFoundError,
                     match=f"no config.json in .*{re.escape(str(no_config))}"):
    whisper.load_encoder(no_config)
  no_weights = tmp_path / "no_weights"
  no_weights.mkdir()
  shutil.copy(checkpoints["safetensors"] / "config.json", no_weights)
  with pytest.raises(FileNotFoundError, match=f"no weights in .*{re.escape(str(no_weights))}"
                                              ": expected one of model.safetensors"):
    whisper.load_encoder(no_weights)


def test_padded_batch_matches_examples_alone(checkpoints):
  encoder = whisper.load_encoder(checkpoints["safetensors"], mask_padding=True)
  lengths = [200, 151]  # 151: the stride-2 convolution's last frame sees padding
  alone = [log_mel(1, n, seed=4 + i) for i, n in enumerate(lengths)]
  batch = np.zeros((2, 240, MELS), np.float32)
  batch[:, 200:] = 7.0  # padding that is not zeros is zeroed by the mask
  for i, example in enumerate(alone):
    batch[i, :lengths[i]] = example[0]
  outputs = encoder(batch, num_frames=tf.constant(lengths, tf.int32))
  for i, example in enumerate(alone):
    expected = encoder(example, num_frames=tf.constant([lengths[i]], tf.int32))
    valid = whisper.output_frames(lengths[i])
    for ours, theirs in zip(outputs["hidden_states"], expected["hidden_states"]):
      assert theirs.shape[1] == valid
      np.testing.assert_allclose(ours[i, :valid], theirs[0], atol=MASKED, rtol=0)


def test_num_frames_is_ignored_without_mask_padding(checkpoints):
  encoder = whisper.load_encoder(checkpoints["safetensors"])
  features = log_mel(2, 200, seed=6)
  np.testing.assert_array_equal(
      encoder(features, num_frames=tf.constant([200, 120]))["last_hidden_state"],
      encoder(features)["last_hidden_state"])


def test_mixed_bfloat16_runs_close_to_float32(checkpoints):
  features = log_mel(2, 200, seed=7)
  expected = whisper.load_encoder(checkpoints["safetensors"])(features)
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    encoder = whisper.load_encoder(checkpoints["safetensors"], mask_padding=True)
    assert encoder.conv1.compute_dtype == "bfloat16"
    outputs = encoder(features, num_frames=tf.constant([200, 200]))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  for ours, theirs in zip(outputs["hidden_states"], expected["hidden_states"]):
    assert ours.dtype == tf.float32
    scale = np.abs(theirs.numpy()).max()
    assert np.abs(ours.numpy() - theirs.numpy()).max() <= 0.05 * scale


def trainable_names(encoder):
  return sorted(w.name for w in encoder.trainable_weights)


def test_set_trainable_blocks(checkpoints):
  encoder = whisper.load_encoder(checkpoints["safetensors"])
  assert len(encoder.trainable_weights) == 36  # all but the positions
  whisper.set_trainable_blocks(encoder, 1)
  top = encoder.blocks[-1].weights + encoder.layer_norm.weights
  assert trainable_names(encoder) == sorted(w.name for w in top)
  assert len(top) == 17
  whisper.set_trainable_blocks(encoder, 0)
  assert encoder.trainable_weights == []
  whisper.set_trainable_blocks(encoder, 2)
  assert len(encoder.trainable_weights) == 32  # not the convolutions
  whisper.set_trainable_blocks(encoder, -1)
  assert len(encoder.trainable_weights) == 36
  whisper.set_trainable_blocks(encoder, 0)
  whisper.set_trainable_blocks(encoder, None)
  assert len(encoder.trainable_weights) == 36
  assert [w.name.split("/")[-1] for w in encoder.non_trainable_weights] == [
      "embed_positions:0"]
  with pytest.raises(ValueError, match="top_k 3"):
    whisper.set_trainable_blocks(encoder, 3)


def test_inside_a_functional_model_rebuilt_and_restored(checkpoints, tmp_path):
  features = keras.Input([None, MELS], name="features")
  num_frames = keras.Input([], dtype=tf.int32, name="num_frames")
  encoder = whisper.load_encoder(checkpoints["safetensors"], mask_padding=True)
  hidden = encoder(features, num_frames=num_frames)["last_hidden_state"]
  logits = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D()(hidden))
  model = keras.Model({"features": features, "num_frames": num_frames}, logits)
  inputs = {"features": log_mel(2, 200, seed=8), "num_frames": np.array([200, 120], np.int32)}
  expected = model(inputs)
  path = tf.train.Checkpoint(model=model).write(os.fspath(tmp_path / "ckpt"))

  rebuilt = keras.Model.from_config(
      model.get_config(), custom_objects={"WhisperEncoder": whisper.WhisperEncoder})
  rebuilt_encoder = rebuilt.get_layer(encoder.name)
  assert rebuilt_encoder.whisper_config == encoder.whisper_config
  assert rebuilt_encoder.mask_padding
  tf.train.Checkpoint(model=rebuilt).read(path).assert_consumed()
  np.testing.assert_array_equal(rebuilt(inputs), expected)


def test_random_encoder_uses_whisper_initialisation(checkpoints):
  keras.utils.set_random_seed(0)
  encoder = whisper.random_encoder(tiny_config())
  positions = checkpoints["torch"]["safetensors"].embed_positions.weight.detach().numpy()
  # transformers computes the sinusoids in float32, we in float64.
  np.testing.assert_allclose(encoder.embed_positions.numpy(), positions, atol=2e-4)
  kernels = [block.self_attn.q_proj.kernel.numpy() for block in encoder.blocks]
  kernels += [block.self_attn.k_proj.kernel.numpy() for block in encoder.blocks]
  assert len({k.tobytes() for k in kernels}) == len(kernels)  # no two alike
  np.testing.assert_allclose(np.std(kernels), 0.02, rtol=0.1)
  assert encoder(log_mel(1, 10))["last_hidden_state"].shape == (1, 5, 64)


def test_encoder_config_sources_agree(checkpoints):
  from_dir = whisper.encoder_config(checkpoints["safetensors"])
  assert from_dir == whisper.encoder_config(tiny_config())
  assert from_dir == whisper.encoder_config(tiny_config().to_dict())
  assert from_dir["d_model"] == 64 and from_dir["activation_function"] == "gelu"
  with pytest.raises(ValueError, match="lacks d_model"):
    whisper.encoder_config({k: v for k, v in from_dir.items() if k != "d_model"})
