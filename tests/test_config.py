"""Typed configs: YAML + overrides, unknown keys, type conversion, validation."""
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
  path = _write(tmp_path, "task: ctc\ntrain:\n  steps: 100\nmodel:\n  name: m\n"
                          "  params: {filters: [8, 8]}\n")
  config = config_lib.load(path, ["optimizer.learning_rate=3e-4", "train.jit_compile=true",
                                  "distill.beta=0.2", "model.params.dropout=0.1",
                                  "data.validation_split=dev"])
  assert config.task == "ctc" and config.train.steps == 100
  # YAML reads "3e-4" as a string; the float field converts it.
  assert config.optimizer.learning_rate == pytest.approx(3e-4)
  assert config.train.jit_compile is True
  assert config.distill.beta == pytest.approx(0.2)
  assert config.model.params == {"filters": [8, 8], "dropout": 0.1}
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
