"""Typed configs: YAML + overrides, unknown keys, type conversion, validation."""
import os

import pytest

from kws_tf import config as config_lib


def _write(tmp_path, text):
  path = tmp_path / "recipe.yaml"
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_defaults_round_trip_through_yaml(tmp_path):
  config = config_lib.load(None)
  again = config_lib.load(_write(tmp_path, config_lib.dump(config)))
  assert again == config


def test_recipe_and_overrides_are_typed(tmp_path):
  path = _write(tmp_path, "task: ctc\ntrain:\n  steps: 100\nmodel:\n  name: wav2letter\n"
                          "  params: {filters: [8, 8], widths: [5, 3], strides: [2, 1]}\n")
  config = config_lib.load(path, ["optimizer.learning_rate=3e-4", "train.jit_compile=true",
                                  "distill.beta=0.2", "model.params.dropouts=[0.1,0]",
                                  "data.validation_split=dev"])
  assert config.task == "ctc" and config.train.steps == 100
  # YAML reads "3e-4" as a string; the float field converts it.
  assert config.optimizer.learning_rate == pytest.approx(3e-4)
  assert config.train.jit_compile is True
  assert config.distill.beta == pytest.approx(0.2)
  assert config.model.params == {"filters": [8, 8], "widths": [5, 3], "strides": [2, 1],
                                 "dropouts": [0.1, 0]}
  assert config.metric == "cer"


@pytest.mark.parametrize("override, message", [
    (["train.stpes=5"], "unknown config key 'train.stpes'"),
    (["colour=red"], "unknown config key 'colour'"),
    (["train.steps=many"], "train.steps must be an integer"),
    (["train.jit_compile=maybe"], "train.jit_compile must be true or false"),
    (["train.strategy=tpu"], "train.strategy must be one of"),
    (["train.steps=0"], "train.steps must be > 0"),
    (["role=teacher", "mode=distill"], "a teacher trains with mode=standard"),
    (["train.steps"], "key=value"),
    (["distill.alpha=1.5"], "distill.alpha must be in"),
    (["distill.temperature=0"], "distill.temperature must be > 0"),
])
def test_bad_keys_and_values_name_the_key(override, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.")
                     .replace("(", r"\(")):
    config_lib.load(None, override)


@pytest.mark.parametrize("value", ["-1e-3", "0", ".nan"])
def test_learning_rate_must_be_positive(value):
  with pytest.raises(config_lib.ConfigError, match=r"optimizer\.learning_rate must be > 0"):
    config_lib.load(None, [f"optimizer.learning_rate={value}"])


@pytest.mark.parametrize("mode", ["standard", "distill"])
@pytest.mark.parametrize("override, message", [
    ("distill.alpha=7", r"distill\.alpha must be in \[0, 1\]; got 7\.0"),
    ("distill.temperature=0", r"distill\.temperature must be > 0; got 0\.0"),
])
def test_distill_fields_are_checked_in_every_mode(mode, override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load(None, [f"mode={mode}", override])


@pytest.mark.parametrize("override, message", [
    ("data.eval_batch_size=0", r"data\.eval_batch_size must be > 0"),
    ("data.shuffle_buffer=0", r"data\.shuffle_buffer must be > 0"),
    ("train.keep_checkpoints=0", r"train\.keep_checkpoints must be > 0"),
    ("data.batch_size=-8", r"data\.batch_size must be > 0"),
    ("optimizer.weight_decay=-0.01", r"optimizer\.weight_decay must be >= 0"),
    ("optimizer.warmup_steps=-1", r"optimizer\.warmup_steps must be >= 0"),
    ("optimizer.clip_norm=-1", r"optimizer\.clip_norm must be >= 0"),
    ("train.early_stopping_patience=-1", r"train\.early_stopping_patience must be >= 0"),
    ("fitnet.hint_learning_rate=-1", r"fitnet\.hint_learning_rate must be >= 0"),
    ("optimizer.final_learning_rate_ratio=2", r"optimizer\.final_learning_rate_ratio must be"),
])
def test_out_of_range_numeric_fields_name_the_key(override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load(None, [override])


@pytest.mark.parametrize("overrides, key", [
    (["model.params.head_dropout=1.0"], "model.params.head_dropout "),
    (["model.params.dropouts=[0.1,0.1,-0.1,0.1,0.1,0.1]"], r"model.params.dropouts\[2\] "),
    (["model.name=whisper_teacher", "model.params.encoder.attention_dropout=1.5"],
     "model.params.encoder.attention_dropout "),
])
def test_dropout_outside_unit_interval_names_the_key(overrides, key):
  with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.") +
                     r"must be a rate in \[0, 1\)"):
    config_lib.load(None, overrides)


def test_unknown_model_parameter_names_key_and_accepted_ones():
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.load(None, ["model.name=resnet18", "model.params.widht=2"])
  message = str(error.value)
  assert "\n" not in message and message.startswith("model.params: ")
  assert "'widht'" in message and "it takes head_dropout, width" in message


def test_unknown_model_and_missing_model_parameters_are_named():
  with pytest.raises(config_lib.ConfigError, match="model.name: unknown model 'resnet81'; "
                     "known models: .*resnet18"):
    config_lib.load(None, ["model.name=resnet81"])
  with pytest.raises(config_lib.ConfigError,
                     match="model 'wav2letter' needs parameters widths, strides, dropouts"):
    config_lib.load(None, ["model.name=wav2letter", "model.params.filters=[8]"])


def test_preset_takes_the_parameters_of_its_base_model():
  config = config_lib.load(None, ["model.name=wav2letter_kws_tiny", "model.params.batch_norm=false",
                                  "model.params.dropouts=[0,0,0,0,0,0]"])
  assert config.model.params == {"batch_norm": False, "dropouts": [0, 0, 0, 0, 0, 0]}


def test_unknown_key_in_file_names_file(tmp_path):
  path = _write(tmp_path, "data:\n  formatt: mfcc\n")
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.load(path)
  assert "data.formatt" in str(error.value) and path in str(error.value)


def test_missing_file_and_bad_yaml(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load(str(tmp_path / "nope.yaml"))
  with pytest.raises(config_lib.ConfigError, match="not valid YAML"):
    config_lib.load(_write(tmp_path, "task: [kws\n"))


SHIPPED = sorted(name[:-len(".yaml")] for name in os.listdir(config_lib.RECIPES)
                 if name.endswith(".yaml") and not name.startswith("records_"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_and_validates(name):
  config = config_lib.load(name)
  assert config.task in ("kws", "ctc") and config.model.name
  config.validate()


def test_ctc_small_augmented_is_ctc_small_augmented_for_longer():
  # benchmarks/README.md measures it as ctc_small with these overrides.
  base = config_lib.load("ctc_small", ["augment.enabled=true", "augment.noise_prob=0.5",
                                       "augment.snr_db_min=10", "augment.babble_weight=0",
                                       "train.steps=8000"])
  assert config_lib.load("ctc_small_augmented") == base


def test_kws_small_stream_augmented_is_the_measured_always_on_student():
  # benchmarks/README.md measures it as kws_small_stream with these overrides.
  base = config_lib.load("kws_small_stream", [
      "augment.enabled=true", "augment.shift_bias_seconds=-0.2",
      "augment.max_shift_seconds=0.15", "train.steps=16000", "train.eval_every=1000",
      "train.checkpoint_every=1000", "train.log_every=100"])
  assert config_lib.load("kws_small_stream_augmented") == base
