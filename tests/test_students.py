"""Tests of the student models: wav2letter, MobileNetV3, ResNet18 and their heads.

Parameter counts are pinned for 39 input channels (13 MFCC + deltas), with
10 classes for kws and a vocabulary of 100 for ctc. ``count_params`` includes
the non-trainable moving statistics of batch norm (4 numbers per channel in
all, 2 of them trainable).
"""
import functools
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from kws_tf.models import heads, registry, wav2letter

NUM_CHANNELS = 39
NUM_CLASSES = {"kws": 10, "ctc": 100}

# (count_params(), trainable parameters) per preset and task.
PARAMETER_COUNTS = {
    "mobilenet_v3_large": {"kws": (3005674, 2981274), "ctc": (3092164, 3067764)},
    "mobilenet_v3_small": {"kws": (944602, 932490), "ctc": (996532, 984420)},
    "resnet18": {"kws": (11184970, 11175370), "ctc": (11231140, 11221540)},
    "wav2letter_kws_small": {"kws": (178970, 177850), "ctc": (193460, 192340)},
    "wav2letter_kws_tiny": {"kws": (73594, 72922), "ctc": (82324, 81652)},
    "wav2letter_student_v0": {"kws": (21820510, 21810510), "ctc": (22000600, 21990600)},
    "wav2letter_student_v1": {"kws": (10802510, 10796510), "ctc": (10892600, 10886600)},
    "wav2letter_student_v2": {"kws": (4676610, 4673010), "ctc": (4721700, 4718100)},
    "wav2letter_v1": {"kws": (23574510, 23562510), "ctc": (23754600, 23742600)},
}
PRESETS = sorted(PARAMETER_COUNTS)
PRESET_TASKS = [(name, task) for name in PRESETS for task in ("kws", "ctc")]

# Small members of each family, fast enough for the behaviour tests.
SMALL_MODELS = {
    "wav2letter": ("wav2letter_kws_tiny", {}),
    "wav2letter_gated": ("wav2letter", dict(
        filters=(16, 16, 24), widths=(7, 3, 1), strides=(2, 1, 1), dropouts=(0.1, 0.1, 0.0),
        conv_type="gated")),
    "wav2letter_centred": ("wav2letter", dict(
        filters=(16, 16, 24), widths=(7, 3, 1), strides=(2, 1, 1), dropouts=(0.1, 0.1, 0.0),
        pooling="centred")),
    "wav2letter_attention": ("wav2letter", dict(
        filters=(16, 16, 24), widths=(7, 3, 1), strides=(2, 1, 1), dropouts=(0.1, 0.1, 0.0),
        pooling="attention")),
    "mobilenet_v3_small": ("mobilenet_v3_small", dict(alpha=0.5)),
    "mobilenet_v3_minimalistic": ("mobilenet_v3_small", dict(alpha=0.5, minimalistic=True)),
    "resnet18": ("resnet18", dict(width=0.125)),
}


@functools.lru_cache(maxsize=None)
def _preset(name: str, task: str) -> keras.Model:
  return registry.build(name, task=task, num_channels=NUM_CHANNELS, num_classes=NUM_CLASSES[task])


def _build_small(family: str, task: str, projection_dim: int = 0) -> keras.Model:
  """A small model with random batch-norm betas and gammas (so zeros do not stay
  zeros) and moving statistics set from one batch (so the outputs depend on the
  input as in a trained model, not mostly on the betas)."""
  name, params = SMALL_MODELS[family]
  model = registry.build(name, task=task, num_channels=NUM_CHANNELS,
                         num_classes=NUM_CLASSES[task], projection_dim=projection_dim, **params)
  rng = np.random.default_rng(5)
  norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
  for layer in norms:
    gamma, beta, mean, variance = layer.get_weights()
    layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.5, beta.shape),
                       mean, variance])
    layer.momentum = 0.0
  model(_inputs([40, 40, 40, 40], seed=9), training=True)
  for layer in norms:
    layer.momentum = 0.99
  return model


_small = functools.lru_cache(maxsize=None)(_build_small)


@pytest.fixture(scope="module", autouse=True)
def _release_models():
  """Frees the cached models (about 2 GB of presets) when this module is done."""
  yield
  _preset.cache_clear()
  _small.cache_clear()
  keras.backend.clear_session()


def _inputs(num_frames, frames=None, seed=0, channels=NUM_CHANNELS):
  """A batch whose frames past ``num_frames`` hold random values, not zeros."""
  num_frames = np.asarray(num_frames, np.int32)
  frames = frames or int(num_frames.max())
  features = np.random.default_rng(seed).standard_normal(
      (len(num_frames), frames, channels)).astype(np.float32)
  return {"features": features, "num_frames": num_frames}


def _valid_outputs(outputs, task, example):
  """The outputs of one example of a batch, ctc ones cut to its logit frames."""
  if task == "kws":
    return {key: value[example].numpy() for key, value in outputs.items()}
  frames = int(outputs["logit_frames"][example])
  return {key: value[example, :frames].numpy() for key, value in outputs.items()
          if key != "logit_frames"}


def test_registry_lists_the_students():
  assert set(PRESETS) | {"wav2letter"} <= set(registry.names())


@pytest.mark.parametrize("name,task", PRESET_TASKS)
def test_parameter_count(name, task):
  model = _preset(name, task)
  trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
  assert (model.count_params(), trainable) == PARAMETER_COUNTS[name][task]


def _wav2letter_count(filters, widths, batch_norm, classes, channels=NUM_CHANNELS):
  """Parameters of a wav2letter: sum of k * in * out + (4 * out with batch norm
  (no conv bias), out without), then the classifier in * classes + classes."""
  total = 0
  for size, width in zip(filters, widths):
    total += width * channels * size + (4 * size if batch_norm else size)
    channels = size
  return total + channels * classes + classes


def test_wav2letter_parameter_count_by_hand():
  # wav2letter_student_v2 for ctc: filters 4 x 200, 500, 500; widths 48, 7, 7, 7, 32, 1.
  convs = 48 * 39 * 200 + 3 * (7 * 200 * 200) + 32 * 200 * 500 + 1 * 500 * 500
  batch_norm = 4 * (4 * 200 + 2 * 500)
  classifier = 500 * 100 + 100
  assert convs + batch_norm + classifier == 4_721_700 == _preset(
      "wav2letter_student_v2", "ctc").count_params()
  # Without batch norm every conv has a bias: sum of k * in * out + out.
  model = registry.build("wav2letter_student_v2", task="ctc", num_channels=39, num_classes=100,
                         batch_norm=False)
  assert model.count_params() == convs + (4 * 200 + 2 * 500) + classifier == 4_716_300


@pytest.mark.parametrize("name", sorted(wav2letter.PRESETS))
def test_wav2letter_presets_match_the_formula(name):
  preset = wav2letter.PRESETS[name]
  for task in ("kws", "ctc"):
    expected = _wav2letter_count(preset["filters"], preset["widths"], True, NUM_CLASSES[task])
    assert PARAMETER_COUNTS[name][task][0] == expected


def test_wav2letter_kws_presets_are_small():
  for name in ("wav2letter_kws_small", "wav2letter_kws_tiny"):
    assert PARAMETER_COUNTS[name]["kws"][0] < 250_000


@pytest.mark.parametrize("size,minimalistic", [("Small", False), ("Small", True),
                                               ("Large", False)])
def test_mobilenet_body_matches_keras_applications(size, minimalistic):
  """Same body as keras.applications (its stem takes 1 channel here, not 3)."""
  reference = getattr(keras.applications, f"MobileNetV3{size}")(
      input_shape=(64, NUM_CHANNELS, 1), include_top=False, weights=None,
      minimalistic=minimalistic, include_preprocessing=False)
  model = (_preset(f"mobilenet_v3_{size.lower()}", "kws") if not minimalistic else
           registry.build(f"mobilenet_v3_{size.lower()}", task="kws", num_channels=NUM_CHANNELS,
                          num_classes=10, minimalistic=True))
  classifier = model.get_layer("logits").count_params()
  assert model.count_params() - classifier == reference.count_params()


def _torch_resnet18_body(epsilon):
  """torchvision's resnet18 up to its last stage (conv1 taking one channel), written out
  with torch layers: torchvision is not installed here. Batch norm with ``epsilon``
  (torchvision's is 1e-5, Keras' 1e-3)."""
  import torch
  from torch import nn

  def norm(channels):
    return nn.BatchNorm2d(channels, eps=epsilon)

  class BasicBlock(nn.Module):
    def __init__(self, inputs, channels, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inputs, channels, 3, stride, 1, bias=False)
      self.bn1 = norm(channels)
      self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
      self.bn2 = norm(channels)
      self.downsample = None
      if stride != 1 or inputs != channels:
        self.downsample = nn.Sequential(nn.Conv2d(inputs, channels, 1, stride, bias=False),
                                        norm(channels))

    def forward(self, x):
      shortcut = x if self.downsample is None else self.downsample(x)
      x = torch.relu(self.bn1(self.conv1(x)))
      return torch.relu(self.bn2(self.conv2(x)) + shortcut)

  stem = [nn.Conv2d(1, 64, 7, 2, 3, bias=False), norm(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
  stages, inputs = [], 64
  for stage, channels in enumerate((64, 128, 256, 512)):
    stages.append(nn.Sequential(BasicBlock(inputs, channels, 1 if stage == 0 else 2),
                                BasicBlock(channels, channels, 1)))
    inputs = channels
  return nn.Sequential(nn.Sequential(*stem), *stages)


def test_resnet18_body_matches_torchvision():
  """The Keras body against torchvision's architecture built in torch: the same weight
  shapes stage by stage, and, with the Keras weights copied over, the same feature map."""
  import torch
  model = registry.build("resnet18", task="kws", num_channels=NUM_CHANNELS, num_classes=10)
  rng = np.random.default_rng(3)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, variance = layer.get_weights()
      layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                         rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, variance.shape)])
  epsilon = model.get_layer("stem_bn").epsilon
  reference = _torch_resnet18_body(epsilon).eval()

  def keras_layers(prefix):
    """(conv, batch norm) layer pairs of a Keras stage, in torch's order."""
    pairs = []
    for block in (1, 2):
      name = f"{prefix}_block{block}"
      pairs += [(f"{name}_conv1", f"{name}_conv1_bn"), (f"{name}_conv2", f"{name}_conv2_bn")]
      if f"{name}_downsample" in [layer.name for layer in model.layers]:
        pairs.append((f"{name}_downsample", f"{name}_downsample_bn"))
    return pairs

  def torch_layers(stage):
    """(conv, batch norm) module pairs of a torch stage."""
    pairs = []
    for block in stage:
      pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
      if block.downsample is not None:
        pairs.append((block.downsample[0], block.downsample[1]))
    return pairs

  stages = [([("stem", "stem_bn")], [(reference[0][0], reference[0][1])])]
  stages += [(keras_layers(f"stage{i}"), torch_layers(reference[i])) for i in range(1, 5)]
  total = 0
  for keras_pairs, torch_pairs in stages:
    assert len(keras_pairs) == len(torch_pairs)
    for (conv_name, bn_name), (conv, bn) in zip(keras_pairs, torch_pairs):
      kernel = model.get_layer(conv_name).get_weights()
      assert len(kernel) == 1  # no bias, as torchvision
      # Keras [height, width, in, out] is torch's [out, in, height, width].
      assert kernel[0].transpose(3, 2, 0, 1).shape == tuple(conv.weight.shape), conv_name
      gamma, beta, mean, variance = model.get_layer(bn_name).get_weights()
      with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel[0].transpose(3, 2, 0, 1).copy()))
        for target, value in ((bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean),
                              (bn.running_var, variance)):
          assert tuple(target.shape) == value.shape, bn_name
          target.copy_(torch.from_numpy(value))
      total += conv.weight.numel() + bn.weight.numel() + bn.bias.numel()
  # torchvision resnet18 has 11,689,512 parameters: without fc (512 * 1000 + 1000) and
  # with a one-channel conv1 (2 * 64 * 7 * 7 fewer), 11,170,240; so has the reference.
  assert total == sum(p.numel() for p in reference.parameters()) == 11_170_240
  trainable = PARAMETER_COUNTS["resnet18"]["kws"][1]
  assert total == trainable - model.get_layer("logits").count_params()

  features = rng.normal(size=(1, 64, NUM_CHANNELS)).astype(np.float32)
  body = keras.Model(model.inputs, model.get_layer("stage4_block2_relu").output)
  expected = body({"features": features, "num_frames": np.array([64])}, training=False).numpy()
  with torch.no_grad():
    # torch's image [batch, channel, time, frequency] is Keras' [batch, time, frequency, channel].
    got = reference(torch.from_numpy(features[:, np.newaxis])).numpy().transpose(0, 2, 3, 1)
  assert got.shape == expected.shape == (1, 2, 2, 512)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _round_trip(model):
  clone = keras.Model.from_config(model.get_config())
  clone.set_weights(model.get_weights())
  batch = _inputs([29, 16], seed=1)
  expected, actual = model(batch), clone(batch)
  assert sorted(actual) == sorted(expected)
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,task", PRESET_TASKS)
def test_preset_config_round_trip(name, task):
  _round_trip(_preset(name, task))


@pytest.mark.parametrize("family", sorted(SMALL_MODELS))
@pytest.mark.parametrize("task", ["kws", "ctc"])
def test_small_model_config_round_trip(family, task):
  _round_trip(_small(family, task, projection_dim=8))


def test_unequal_list_lengths_are_an_error():
  with pytest.raises(ValueError, match="equal lengths.*filters 2, widths 1, strides 2, dropouts 2"):
    registry.build("wav2letter", task="kws", num_channels=NUM_CHANNELS, num_classes=10,
                   filters=(8, 8), widths=(3,), strides=(2, 1), dropouts=(0.0, 0.0))


def test_build_errors():
  with pytest.raises(ValueError, match="time stride of 2"):
    registry.build("wav2letter_kws_tiny", task="ctc", num_channels=NUM_CHANNELS,
                   num_classes=100, strides=(2, 2, 1, 1, 1, 1))
  with pytest.raises(ValueError, match="conv_type"):
    registry.build("wav2letter_kws_tiny", task="kws", num_channels=NUM_CHANNELS,
                   num_classes=10, conv_type="glu")
  with pytest.raises(ValueError, match="task"):
    registry.build("resnet18", task="asr", num_channels=NUM_CHANNELS, num_classes=10)


def test_gated_conv_is_a_times_sigmoid_b():
  model = registry.build("wav2letter", task="kws", num_channels=5, num_classes=3,
                         filters=(4,), widths=(3,), strides=(1,), dropouts=(0.0,),
                         conv_type="gated", batch_norm=False)
  glu = keras.Model(model.inputs, model.get_layer("conv0_glu").output)
  batch = _inputs([6, 6], channels=5)
  actual = glu(batch).numpy()[:, :, 0, :]

  def conv(layer):  # "same" with width 3: one zero frame on each side.
    kernel, bias = (w.numpy() for w in model.get_layer(layer).weights)
    padded = np.pad(batch["features"], ((0, 0), (1, 1), (0, 0)))
    return sum(padded[:, k:k + 6] @ kernel[k, 0] for k in range(3)) + bias

  a, b = conv("conv0_linear"), conv("conv0_gate")
  np.testing.assert_allclose(actual, a / (1.0 + np.exp(-b)), rtol=1e-5, atol=1e-6)


def test_frame_mask_and_masked_mean():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((3, 6, 2, 4)).astype(np.float32)
  features = np.zeros((3, 11, NUM_CHANNELS), np.float32)  # 11 frames -> 6 at stride 2
  num_frames = np.array([11, 5, 0], np.int32)
  mask = heads.FrameMask(2)([features, num_frames]).numpy()
  assert mask.shape == (3, 6, 1, 1)
  np.testing.assert_array_equal(mask[:, :, 0, 0].sum(1), [6, 3, 0])  # ceil(num_frames / 2)
  pooled = heads.MaskedMean()([x, mask]).numpy()
  expected = [x[0].mean((0, 1)), x[1, :3].mean((0, 1)), np.zeros(4)]
  np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)
  assert heads.MaskedMean(keepdims=True)([x, mask]).shape == (3, 1, 1, 4)
  # Attentive pooling: softmax of v . tanh(W x + b) over the valid positions.
  layer = heads.AttentivePooling(units=5)
  attended = layer([x, mask]).numpy()
  w, b = layer.hidden.get_weights()
  v, c = layer.score.get_weights()
  for i, valid in enumerate([6, 3]):
    positions = x[i, :valid].reshape(-1, 4)
    scores = (np.tanh(positions @ w + b) @ v + c)[:, 0]
    weights = np.exp(scores - scores.max())
    np.testing.assert_allclose(attended[i], weights @ positions / weights.sum(), rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_array_equal(attended[2], np.zeros(4))
  assert heads.output_frames(23, 2) == 12


def test_centred_mean_weights_frames_by_their_offset_from_the_clip_centre():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((3, 6, 2, 4)).astype(np.float32)
  mask = np.zeros((3, 6, 1, 1), np.float32)
  for i, valid in enumerate([6, 3, 0]):
    mask[i, :valid] = 1
  layer = heads.CentredMean(initial_width=0.2)
  pooled = layer([x, mask]).numpy()
  assert float(layer.width) == pytest.approx(0.2)
  for i, valid in enumerate([6, 3]):
    offset = (np.arange(valid) - (valid - 1) / 2) / valid
    weights = np.exp(-0.5 * (offset / 0.2) ** 2)
    expected = (weights[:, None, None] * x[i, :valid]).sum((0, 1)) / (2 * weights.sum())
    np.testing.assert_allclose(pooled[i], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(pooled[2], np.zeros(4))
  # Very wide: the plain mean; the width is trained.
  np.testing.assert_allclose(heads.CentredMean(initial_width=1e4)([x, mask]),
                             heads.MaskedMean()([x, mask]), atol=1e-5)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(layer([x, mask])))
  assert float(tape.gradient(loss, layer.raw_width)) != 0.0
  with pytest.raises(ValueError, match="pooling must be one of"):
    registry.build("wav2letter_kws_tiny", task="kws", num_channels=NUM_CHANNELS,
                   num_classes=10, pooling="max")


def test_valid_padding_keeps_only_the_frames_whose_receptive_field_is_inside():
  """wav2letter padding=valid: widths 5, 3, 1, stride 2 first: receptive field 5 +
  2 * 2 = 9 input frames, so 23 frames give (23 - 9) // 2 + 1 = 8 frames, frame t
  reading input frames [2t, 2t + 9), and the logits classify their mean."""
  keras.utils.set_random_seed(0)  # weights that pass the change on (a ReLU may stop it)
  model = registry.build("wav2letter", task="kws", num_channels=5, num_classes=3,
                         filters=(4, 6, 8), widths=(5, 3, 1), strides=(2, 1, 1),
                         dropouts=(0.0,) * 3, padding="valid")
  assert not any(isinstance(layer, (keras.layers.ZeroPadding2D, keras.layers.Multiply))
                 for layer in model.layers)
  last = keras.Model(model.inputs, model.get_layer("conv2_relu").output)
  batch = _inputs([23], channels=5, seed=4)
  frames = last(batch).numpy()
  assert frames.shape == (1, 8, 1, 8)
  changed = dict(batch, features=batch["features"].copy())
  changed["features"][0, 12] += 1.0  # read by frames 2..6 (2t <= 12 < 2t + 9)
  moved = np.flatnonzero(np.abs(last(changed).numpy() - frames).max(axis=(0, 2, 3)) > 0)
  np.testing.assert_array_equal(moved, [2, 3, 4, 5, 6])
  kernel, bias = model.get_layer("logits").get_weights()
  np.testing.assert_allclose(model(batch)["logits"].numpy(),
                             frames.mean(axis=(1, 2)) @ kernel + bias, rtol=1e-5, atol=1e-6)
  # In a batch padded to 37 frames with garbage, and alone: the same logits.
  padded = _inputs([37, 23], channels=5, seed=6)
  padded["features"][1, :23] = batch["features"][0]
  np.testing.assert_allclose(model(padded)["logits"].numpy()[1], model(batch)["logits"][0],
                             rtol=1e-5, atol=1e-6)
  assert heads.output_frames(23, 2, 9) == 8 and heads.output_frames(8, 2, 9) == 0
  # A clip shorter than the receptive field has no frame: the pooled mean is zeros.
  short = _inputs([8], frames=9, channels=5)
  np.testing.assert_allclose(model(short)["logits"].numpy()[0], bias, atol=1e-6)
  # The masks keep their receptive field through a config round trip.
  _round_trip(registry.build("wav2letter", task="kws", num_channels=NUM_CHANNELS, num_classes=3,
                             filters=(4, 6, 8), widths=(5, 3, 1), strides=(2, 1, 1),
                             dropouts=(0.0,) * 3, padding="valid"))


def test_valid_padding_build_errors():
  with pytest.raises(ValueError, match="padding 'valid' is for kws models"):
    registry.build("wav2letter_kws_tiny", task="ctc", num_channels=NUM_CHANNELS,
                   num_classes=100, padding="valid")
  with pytest.raises(ValueError, match="padding must be 'same' or 'valid'"):
    registry.build("wav2letter_kws_tiny", task="kws", num_channels=NUM_CHANNELS,
                   num_classes=10, padding="causal")


@pytest.mark.parametrize("frames", [6, 7])
def test_strided_padding_does_not_depend_on_length(frames):
  """Output t of a stride-2 width-3 conv is centred on input 2t for odd and even
  lengths (TensorFlow's "same" centres it on 2t + 1 for even lengths)."""
  x = keras.Input((None, 1, 1))
  padded, padding = heads.pad_for_conv(x, (3, 1), (2, 1), name="pad")
  conv = keras.layers.Conv2D(1, (3, 1), strides=(2, 1), padding=padding, use_bias=False)
  model = keras.Model(x, conv(padded))
  conv.set_weights([np.array([0.0, 1.0, 0.0], np.float32).reshape(3, 1, 1, 1)])
  outputs = model(np.arange(frames, dtype=np.float32).reshape(1, frames, 1, 1))
  np.testing.assert_array_equal(np.ravel(outputs), np.arange(0, frames, 2))


@pytest.mark.parametrize("family", sorted(SMALL_MODELS))
@pytest.mark.parametrize("task", ["kws", "ctc"])
def test_padding_does_not_change_valid_outputs(family, task):
  """Exact up to float rounding: every frame-mixing layer reads zeros past the
  valid frames and strided layers pad independently of the length."""
  model = _small(family, task, projection_dim=8)
  num_frames = [37, 23]
  batch = _inputs(num_frames, frames=37)  # the second example has 14 garbage frames
  outputs = model(batch)
  longer = dict(batch, features=np.pad(batch["features"], ((0, 0), (0, 11), (0, 0))))
  longer_outputs = model(longer)
  for example, frames in enumerate(num_frames):
    alone = model({"features": batch["features"][example:example + 1, :frames],
                   "num_frames": np.array([frames], np.int32)})
    expected = _valid_outputs(alone, task, 0)
    for actual in (_valid_outputs(outputs, task, example),
                   _valid_outputs(longer_outputs, task, example)):
      assert sorted(actual) == sorted(expected) == sorted(["logits", "projection"])
      for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-4, atol=1e-4)
  # The outputs do depend on the last valid frames, so the checks above can fail.
  changed = dict(batch, features=batch["features"].copy())
  changed["features"][1, 20:23] += 1.0
  difference = (_valid_outputs(model(changed), task, 1)["logits"]
                - _valid_outputs(outputs, task, 1)["logits"])
  assert np.abs(difference).max() > 1e-2


@pytest.mark.parametrize("family", sorted(SMALL_MODELS))
def test_ctc_logit_frames(family):
  model = _small(family, "ctc", projection_dim=8)
  for frames in (37, 40):
    outputs = model(_inputs([frames, 23, 1], frames=frames))
    assert outputs["logits"].shape == (3, math.ceil(frames / 2), 100)
    assert outputs["logit_frames"].dtype == tf.int32
    np.testing.assert_array_equal(outputs["logit_frames"], [math.ceil(frames / 2), 12, 1])


@pytest.mark.parametrize("family", ["wav2letter", "mobilenet_v3_small", "resnet18"])
def test_projection_output(family):
  batch = _inputs([30, 17])
  kws = _small(family, "kws", projection_dim=8)(batch)
  assert kws["logits"].shape == (2, 10) and kws["projection"].shape == (2, 8)
  ctc = _small(family, "ctc", projection_dim=8)(batch)
  assert ctc["logits"].shape == (2, 15, 100) and ctc["projection"].shape == (2, 15, 8)
  assert kws["projection"].dtype == ctc["projection"].dtype == tf.float32
  assert "projection" not in _small(family, "kws")(batch)


@pytest.mark.parametrize("family,task", [("wav2letter", "ctc"), ("wav2letter_centred", "kws"),
                                         ("wav2letter_attention", "kws"),
                                         ("mobilenet_v3_minimalistic", "kws")])
def test_quantization_aware_training(family, task):
  from tensorflow_model_optimization.quantization.keras import QuantizeWrapperV2
  model = _small(family, task, projection_dim=8)
  qat = heads.quantize_model(model)
  wrapped = {layer.layer.name: layer for layer in qat.layers
             if isinstance(layer, QuantizeWrapperV2)}
  weighted = [layer for layer in model.layers
              if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
  assert weighted and all(layer.name in wrapped for layer in weighted)
  first = weighted[0]
  # The wrapper holds the kernel variable (its layer's kernel is the fake-quantized one).
  np.testing.assert_array_equal(wrapped[first.name].trainable_weights[0], first.kernel)

  batch = _inputs([30, 17])
  with tf.GradientTape() as tape:
    outputs = qat(batch, training=True)
    loss = (tf.reduce_mean(tf.square(outputs["logits"]))
            + tf.reduce_mean(tf.square(outputs["projection"])))
  gradients = tape.gradient(loss, qat.trainable_weights)
  assert all(gradient is not None for gradient in gradients)
  expected = model(batch)
  assert sorted(outputs) == sorted(expected)
  assert outputs["logits"].shape == expected["logits"].shape
  assert np.all(np.isfinite(outputs["logits"]))


@pytest.mark.parametrize("family,task", [("wav2letter_gated", "kws"),
                                         ("mobilenet_v3_small", "ctc"), ("resnet18", "kws")])
def test_mixed_precision_outputs_are_float32(family, task):
  name, params = SMALL_MODELS[family]
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = registry.build(name, task=task, num_channels=NUM_CHANNELS,
                           num_classes=NUM_CLASSES[task], projection_dim=8, **params)
    outputs = model(_inputs([30, 17]))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert model.get_layer("features_2d").compute_dtype == "bfloat16"
  assert outputs["logits"].dtype == outputs["projection"].dtype == tf.float32
  assert np.all(np.isfinite(outputs["logits"]))
  if task == "ctc":
    assert outputs["logit_frames"].dtype == tf.int32
