"""kws-create-guidance --runner=beam: the local runner's guidance from an Apache Beam pipeline."""
import glob
import os
import re
import shutil

import pytest

from conftest import run_module
from data_prep import guidance, guidance_shards
from kws_tf import config as config_lib

MODULE = "data_prep.create_guidance"
TWO_PROCESSES = "--direct_num_workers=2 --direct_running_mode=multi_processing"


def _files(root):
  """{path under root: bytes} of every file under ``root``."""
  return {os.path.relpath(p, root): open(p, "rb").read()
          for p in glob.glob(f"{root}/**", recursive=True) if os.path.isfile(p)}


@pytest.mark.parametrize("kind", ["logits", "hints"])
def test_beam_runner_writes_the_bytes_of_the_local_runner(kind, kws_teacher_dir,
                                                         kws_train_records, tmp_path,
                                                         monkeypatch, capsys):
  args = dict(kind=kind, up_to=1, dtype="float32", batch_size=5)
  local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
  guidance.create_guidance(kws_teacher_dir, kws_train_records, local, **args)
  loads = []
  load = guidance_shards.load_guidance_model
  monkeypatch.setattr(guidance_shards, "load_guidance_model", lambda job: loads.append(1) or load(job))
  guidance.create_guidance(kws_teacher_dir, kws_train_records, beam, runner="beam", **args)
  shards = sorted(n for n in _files(local) if n.endswith(".tfrecord"))
  assert len(shards) >= 3
  # The launcher loads the teacher, then each DoFn instance once, not once per shard.
  assert 2 <= len(loads) < 1 + len(shards)
  # Shards, plan.json and metadata.json; no scratch folder or temporary file left.
  assert _files(beam) == _files(local)

  # A shard missing (as if killed before it): the rerun writes only it, identically.
  os.remove(os.path.join(beam, shards[0]))
  capsys.readouterr()
  guidance.create_guidance(kws_teacher_dir, kws_train_records, beam, runner="beam", **args)
  assert (f"1 guidance shards to write ({len(shards) - 1} already complete), Apache Beam "
          "(DirectRunner)") in capsys.readouterr().out
  assert _files(beam) == _files(local)


def test_beam_runner_writes_the_views_of_the_local_runner(kws_teacher_dir, kws_raw_records,
                                                         tmp_path):
  args = dict(dtype="float32", views=3, view_seed=5, batch_size=6,
              augment_config=config_lib.AugmentConfig(enabled=True))
  local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
  meta = guidance.create_guidance(kws_teacher_dir, kws_raw_records, local, **args)
  assert meta["outputs"]["logits"] == {"shape": [3, 10]}
  assert meta["outputs"]["features"]["shape"][0] == 3  # the teacher's features of each view
  guidance.create_guidance(kws_teacher_dir, kws_raw_records, beam, runner="beam",
                           beam_pipeline_options=TWO_PROCESSES, **args)
  assert len([n for n in _files(local) if n.endswith(".tfrecord")]) >= 2
  assert _files(beam) == _files(local)


def test_damaged_data_shard_is_the_same_one_line_error_with_either_runner(
    kws_teacher_dir, kws_train_records, tmp_path):
  records_dir = tmp_path / "records"
  shutil.copytree(kws_train_records, records_dir)
  damaged = sorted(glob.glob(f"{records_dir}/logmel/train-*.tfrecord"))[1]
  blob = open(damaged, "rb").read()
  with open(damaged, "wb") as f:  # the last record cut short
    f.write(blob[:-100])
  errors = {}
  for runner in ("local", "beam"):
    out = tmp_path / runner
    result = run_module(MODULE, f"--teacher_dir={kws_teacher_dir}", f"--data_dir={records_dir}",
                        f"--out_dir={out}", f"--runner={runner}", check=False)
    assert result.returncode == 2, result.stderr
    errors[runner] = result.stderr.strip().splitlines()[-1]
    assert not os.path.exists(out / os.path.basename(damaged))
    assert not glob.glob(f"{out}/**/*.tmp-*", recursive=True)
    assert not os.path.exists(out / "metadata.json")
  assert errors["local"] == errors["beam"]
  assert re.fullmatch(f"error: {re.escape(damaged)}: truncated record at \\d+' failed with "
                      "Read less bytes than requested", errors["beam"]), errors["beam"]
  # The Beam runner wrote every other shard.
  shards = len(glob.glob(f"{records_dir}/logmel/*.tfrecord"))
  assert len(glob.glob(f"{tmp_path}/beam/*.tfrecord")) == shards - 1


def test_runner_flags_are_listed_and_a_bad_runner_is_a_clear_error(kws_teacher_dir,
                                                                   kws_train_records, tmp_path):
  helped = run_module(MODULE, "--helpfull", check=False)  # absl exits 1 after help
  assert "--runner" in helped.stdout and "--beam_pipeline_options" in helped.stdout
  refused = run_module(MODULE, f"--teacher_dir={kws_teacher_dir}",
                       f"--data_dir={kws_train_records}", f"--out_dir={tmp_path / 'out'}",
                       "--runner=spark", check=False)
  assert refused.returncode != 0
  assert "flag --runner=spark: value should be one of <local|beam>" in refused.stderr
  with pytest.raises(ValueError, match=r"unknown runner 'spark' \(local or beam\)"):
    guidance.create_guidance(kws_teacher_dir, kws_train_records, str(tmp_path / "out"),
                             runner="spark")
  assert not os.path.exists(tmp_path / "out")
  with pytest.raises(SystemExit, match="^error: --beam_pipeline_options: .*NoSuchRunner"):
    guidance.create_guidance(kws_teacher_dir, kws_train_records, str(tmp_path / "bad"),
                             runner="beam", beam_pipeline_options="--runner=NoSuchRunner")
