"""Stages (kws_tf.stages): skipped only while program, options and inputs match;
and the recipes, found by name in the source tree and in a built wheel."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from kws_tf import config as config_lib
from kws_tf import text
from kws_tf.stages import Runner, Stage, StageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program that appends its arguments to <out>/runs.txt (one line per run) and
# fails, before finishing, while a file named FAIL exists in its working directory.
FAKE = '''import os, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "runs.txt"), "a") as f:
  f.write(" ".join(sys.argv[2:]) + "\\n")
if os.path.exists("FAIL"):
  sys.exit(3)
open(os.path.join(out, "done"), "w").close()
'''


@pytest.fixture
def work(tmp_path):
  (tmp_path / "fake_stage.py").write_text(FAKE)
  return tmp_path


def _stage(work, name="a", options=(), inputs=(), resumable=False, untracked=(), adopt=False):
  out = str(work / name)
  return Stage(name, "fake_stage", [out, *options], inputs=list(inputs), outputs=[out],
               done=[os.path.join(out, "done")], resumable=resumable, untracked=list(untracked),
               adopt=adopt)


def _runs(work, name="a"):
  return open(work / name / "runs.txt").read().splitlines()


def test_a_stage_is_skipped_while_nothing_changes_and_reruns_when_an_option_does(work, capsys):
  runner = Runner(str(work / "stamps"), cwd=str(work))
  assert runner.run(_stage(work, options=["--steps=3"], untracked=["--cores=2"]))
  # The same options (other untracked ones): skipped.
  assert not runner.run(_stage(work, options=["--steps=3"], untracked=["--cores=8"]))
  assert "== a: complete" in capsys.readouterr().out
  assert _runs(work) == ["--steps=3 --cores=2"]
  # Another option: the old output is moved aside and the stage reruns, saying why.
  assert runner.run(_stage(work, options=["--steps=5"]))
  out = capsys.readouterr().out
  assert "== a: rerun, options --steps=3 -> --steps=5" in out
  assert _runs(work) == ["--steps=5"]
  assert open(work / "a.stale" / "runs.txt").read() == "--steps=3 --cores=2\n"
  assert runner.read_stamp(_stage(work))["state"] == "complete"


def test_a_stage_reruns_when_an_input_changes(work, capsys):
  runner = Runner(str(work / "stamps"), cwd=str(work))
  recipe = work / "recipe.yaml"
  recipe.write_text("steps: 3\n")
  upstream = _stage(work, "up")
  runner.run(upstream)
  down = _stage(work, "down", inputs=[upstream, str(recipe)])
  runner.run(down)
  assert not runner.run(down)
  # A file input's bytes.
  recipe.write_text("steps: 4\n")
  assert runner.run(down)
  assert f"== down: rerun, inputs changed: {recipe}" in capsys.readouterr().out
  # An upstream stage that reran (for any reason) reruns what reads it.
  shutil.rmtree(work / "up")
  assert runner.run(upstream)
  assert "rerun, its output is missing" in capsys.readouterr().out
  assert runner.run(down)
  assert "== down: rerun, inputs changed: up" in capsys.readouterr().out
  assert _runs(work, "down") == [""] and os.path.exists(work / "down.stale" / "done")
  # A directory input by its listing.
  folder = work / "checkpoint"
  folder.mkdir()
  (folder / "model.bin").write_bytes(b"12")
  with_dir = _stage(work, "dir", inputs=[str(folder)])
  runner.run(with_dir)
  assert not runner.run(with_dir)
  (folder / "model.bin").write_bytes(b"123")
  assert runner.run(with_dir)


def test_a_killed_stage_reruns_and_only_a_resumable_one_keeps_its_partial_output(work, capsys):
  runner = Runner(str(work / "stamps"), cwd=str(work))
  (work / "FAIL").write_text("")
  for name, resumable in (("plain", False), ("resumable", True)):
    with pytest.raises(StageError, match=f"stage {name} failed"):
      runner.run(_stage(work, name, resumable=resumable))
    assert runner.read_stamp(_stage(work, name))["state"] == "running"
  os.remove(work / "FAIL")
  capsys.readouterr()
  runner.run(_stage(work, "plain"))
  assert "== plain: rerun, the previous run stopped before the end" in capsys.readouterr().out
  assert _runs(work, "plain") == [""]
  runner.run(_stage(work, "resumable", resumable=True))
  assert "== resumable: resuming" in capsys.readouterr().out
  assert _runs(work, "resumable") == ["", ""]


def test_output_without_a_stamp_is_redone_unless_adopted(work, capsys):
  (work / "a").mkdir()
  (work / "a" / "done").write_text("")
  assert Runner(str(work / "stamps"), cwd=str(work)).run(_stage(work))
  assert "no stamp saying what made it" in capsys.readouterr().out
  (work / "b").mkdir()
  (work / "b" / "done").write_text("")
  runner = Runner(str(work / "stamps"), cwd=str(work))
  assert not runner.run(_stage(work, "b", adopt=True))
  assert not os.path.exists(work / "b" / "runs.txt")
  assert runner.read_stamp(_stage(work, "b"))["adopted"]


def test_recipes_are_found_by_name_or_path():
  path = config_lib.find_recipe("kws_small")
  assert path == os.path.join(config_lib.RECIPES, "kws_small.yaml") and os.path.isfile(path)
  assert config_lib.find_recipe("kws_small.yaml") == path
  assert config_lib.find_recipe("configs/kws_small.yaml") == "configs/kws_small.yaml"
  assert config_lib.load("kws_small") == config_lib.load(os.path.join(REPO, "configs",
                                                                      "kws_small.yaml"))
  with pytest.raises(config_lib.ConfigError, match="not found: no_such_recipe"):
    config_lib.find_recipe("no_such_recipe")
  kws = config_lib.load_data_recipe("records_kws")
  assert "raw" in kws.formats and kws.feature_params["mfcc"]["fft_length"] == 320
  assert kws.converter_flags()[1].startswith("--feature_params=mfcc.frame_length=320,")


def test_a_data_recipe_with_an_unknown_key_or_format_is_refused(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("formats: [mfcc]\nfeatures: {}\n")
  with pytest.raises(config_lib.ConfigError, match="unknown key 'features'"):
    config_lib.load_data_recipe(str(bad))
  bad.write_text("formats: [mfcc]\nfeature_params: {logmel: {num_mel_bins: 40}}\n")
  with pytest.raises(config_lib.ConfigError, match="does not write"):
    config_lib.load_data_recipe(str(bad))
  bad.write_text("formats: [mfcc]\nvocab: klingon\n")
  with pytest.raises(config_lib.ConfigError, match="bad.yaml: vocab: vocabulary not found"):
    config_lib.load_data_recipe(str(bad))


def test_the_ctc_data_recipe_names_the_shipped_vietnamese_vocabulary():
  ctc = config_lib.load_data_recipe("records_ctc")
  assert ctc.vocab == "vietnamese" and ctc.converter_flags()[-1] == "--vocab=vietnamese"
  assert "--vocab=vietnamese" not in config_lib.load_data_recipe("records_kws").converter_flags()


def test_a_built_wheel_carries_the_recipes_and_finds_them_by_name(tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  for name in ("setup.py", "README.md"):
    shutil.copy(os.path.join(REPO, name), source)
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
  for package in ("kws_tf", "data_prep"):
    shutil.copytree(os.path.join(REPO, package), source / package, ignore=ignore)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(tmp_path / "dist"), str(source)], check=True,
                 capture_output=True)
  wheel, = (tmp_path / "dist").glob("kws_tf-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    archive.extractall(tmp_path / "installed")
  for recipe in os.listdir(config_lib.RECIPES):
    assert f"kws_tf/configs/{recipe}" in names
  for vocabulary in os.listdir(text.VOCABULARIES):
    assert f"kws_tf/vocabularies/{vocabulary}" in names
  # Away from the repository, the unpacked wheel's modules find them by name.
  found = subprocess.run(
      [sys.executable, "-c", "from kws_tf import config, text; "
       "print(config.find_recipe('kws_small')); print(text.find_vocabulary('vietnamese'))"],
      cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path / "installed")),
      capture_output=True, text=True, check=True).stdout.split()
  installed = tmp_path / "installed" / "kws_tf"
  assert found == [str(installed / "configs" / "kws_small.yaml"),
                   str(installed / "vocabularies" / "vietnamese.txt")]
