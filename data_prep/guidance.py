"""Guidance records: a trained teacher's logits or hints, mirroring the data shards.

The record layout and metadata are those of ``data_prep/create_guidance``
(the binary); this module holds the work, so tests and the pipeline can call
``create_guidance`` directly. Two runners write the shards: this process, one
shard after another (``runner="local"``), or an Apache Beam pipeline of one
element per shard (``runner="beam"``, ``data_prep.beam_guidance``); both
through a ``data_prep.guidance_shards.GuidanceWriter``, so they write the same bytes.
"""
import glob
import hashlib
import os
from typing import List, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

from data_prep import guidance_shards
from kws_tf import records

PLAN_FILE = "plan.json"


def teacher_fingerprint(teacher_dir: str, checkpoint_path: str) -> str:
  """sha256 over the teacher's model.json, config.yaml and checkpoint files."""
  digest = hashlib.sha256()
  files = [os.path.join(teacher_dir, "model.json"), os.path.join(teacher_dir, "config.yaml")]
  files += sorted(glob.glob(checkpoint_path + ".*"))
  for path in files:
    digest.update(os.path.basename(path).encode())
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()


def create_guidance(teacher_dir: str, data_dir: str, out_dir: str, kind: str = "logits",
                    up_to: int = -1, with_features: bool = True, splits=(),
                    batch_size: int = 32, dtype: str = "float16",
                    checkpoint: str = "best", views: int = 0, augment_config=None,
                    view_seed: int = 0, babble_split: str = "train", runner: str = "local",
                    beam_pipeline_options: str = "", extend: str = "",
                    ensemble: Sequence[str] = ()) -> dict:
  """Writes guidance shards and metadata.json; returns the metadata.

  The guidance shards not yet written are written by ``runner``: ``local``,
  this process, one after another; ``beam``, an Apache Beam pipeline run by
  ``beam_pipeline_options`` (shell words; empty: the DirectRunner), a teacher
  per worker. The same bytes either way. A shard that cannot be read or
  written raises OSError naming the file (local: the first, and the run
  stops) or ``shard_worker.ShardError`` (beam: the first of them by name and
  the number of the others, after every other shard was written).

  The metadata's ``frame_seconds`` is the duration of one frame of the
  teacher's frame-level outputs (ctc logits, hints, ``frames``): its
  ``ModelSpec.output_frame_seconds``, the hop of its front end times its time
  stride (None for a teacher without frame-level outputs).

  With ``views`` > 0 (logits) every record gets the teacher's logits for
  ``views`` augmented views of its example (``augment_config``, a
  ``config.AugmentConfig``, applied to the records' raw audio): kws, windows
  of the clip with context, ``[views, classes]``, and with ``with_features``
  the teacher's features for each view, ``[views, d]``; ctc (logits only,
  ``with_features`` is ignored), the whole utterance
  (``kws_tf.utterance_augment``), ``frames [views]`` and the views' logits one
  after another, ``[sum of frames, vocabulary]``. A student trained with the
  same augmentation sees exactly those views (``kws_tf.data.make_dataset``).
  Babble comes from ``babble_split``'s negatives (ctc: utterances), as in the
  student's pipeline (its ``data.train_split``). ``extend`` names finished
  guidance of fewer views made the same way (teacher, data, augment section,
  view seed, dtype): its views are copied and only the others computed, so
  views can be added to guidance later; the records equal those of a run of
  all ``views`` (up to the teacher's batching).

  ``ensemble`` names more teacher dirs (logits only, without features): the
  stored logits are then the log of the mean of all the teachers' class
  probabilities (``guidance_shards.ensemble_model``). Every teacher must read
  the same input (format, feature parameters, normalisation) and give the same
  outputs (task, classes or vocabulary, frame rate); ``checkpoint`` names the
  weights of each.
  """
  from kws_tf import augment, data
  from kws_tf import model_dir as model_dir_lib

  if runner not in ("local", "beam"):
    raise ValueError(f"unknown runner {runner!r} (local or beam)")
  spec, data_meta, _ = model_dir_lib.model_records(teacher_dir, data_dir)
  fmt = spec.format
  if views < 0:
    raise ValueError(f"views must be >= 0, got {views}")
  if views and (kind != "logits" or augment_config is None):
    raise ValueError("augmented views (--views) are logits guidance, made with a "
                     "recipe's augment section (--augment_recipe)")
  if views:
    data.check_context(data_meta, data_dir)
    with_features = with_features and spec.task == "kws"
  splits = list(splits) or list(data_meta.splits)
  unknown = [s for s in splits if s not in data_meta.splits]
  if unknown:
    raise ValueError(f"{data_dir} has no split {unknown[0]!r} (it has "
                     f"{', '.join(data_meta.splits)})")
  checkpoint_path = model_dir_lib.checkpoint_path(teacher_dir, checkpoint)
  fingerprint = teacher_fingerprint(teacher_dir, checkpoint_path)
  members = []
  if ensemble:
    if kind != "logits" or with_features:
      raise ValueError("an ensemble of teachers gives logits only: use --guidance=logits "
                       "--nofeatures")
    for other_dir in ensemble:
      _check_same_io(spec, teacher_dir, other_dir)
      members.append((other_dir, model_dir_lib.checkpoint_path(other_dir, checkpoint)))
    fingerprint = hashlib.sha256(" ".join(
        [fingerprint] + [teacher_fingerprint(d, c) for d, c in members]).encode()).hexdigest()
  params = {"kind": kind, "layer": up_to if kind == "hints" else None,
            "features": with_features and kind == "logits", "dtype": dtype,
            "splits": splits, "teacher_fingerprint": fingerprint,
            "data_fingerprint": data_meta.fingerprint}
  if members:
    params["teachers"] = 1 + len(members)
  if views:
    params.update(views=views, view_seed=view_seed, augment=augment.view_fields(augment_config),
                  babble_split=babble_split)
  first_view = _check_extend(extend, out_dir, params, views) if extend else 0
  os.makedirs(out_dir, exist_ok=True)
  plan_path = os.path.join(out_dir, PLAN_FILE)
  if os.path.exists(plan_path) and records.read_json(plan_path) != params:
    old = records.read_json(plan_path)
    differ = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
    raise ValueError(f"{out_dir} holds guidance made differently (differs in: "
                     f"{', '.join(differ)}); use another --out_dir")
  records.write_json(plan_path, params)

  job = {"teacher_dir": teacher_dir, "checkpoint_path": checkpoint_path, "ensemble": members,
         "data_dir": data_dir,
         "out_dir": out_dir, "kind": kind, "up_to": up_to, "features": with_features,
         "batch_size": batch_size, "dtype": dtype, "views": views,
         "augment_config": augment_config, "view_seed": view_seed,
         "babble_split": babble_split, "base_dir": extend, "first_view": first_view}
  model, names = guidance_shards.load_guidance_model(job)
  outputs = guidance_shards.output_shapes(model, names)
  if views and spec.task == "kws":
    outputs = {name: {**info, "shape": [views] + info["shape"]}
               for name, info in outputs.items()}
  todo = []
  for split in splits:
    for path in data.shard_paths(data_dir, fmt, split, data_meta):
      if not os.path.exists(os.path.join(out_dir, os.path.basename(path))):
        todo.append(path)
  done = sum(len(data_meta.splits[s].shards) for s in splits) - len(todo)
  message = f"{len(todo)} guidance shards to write ({done} already complete)"
  if runner == "beam":
    print(f"{message}, Apache Beam ({beam_pipeline_options or 'DirectRunner'})", flush=True)
    del model  # each Beam worker loads its own teacher
    if todo:
      from data_prep import beam_guidance
      beam_guidance.write(todo, job, beam_pipeline_options)
  else:
    print(message, flush=True)
    _write_locally(guidance_shards.GuidanceWriter(job, model, names), todo, data_meta, splits,
                   kind, views - first_view)
  meta = {**params, "schema_version": records.SCHEMA_VERSION, "task": spec.task,
          "frame_seconds": spec.output_frame_seconds, "compression": data_meta.compression,
          "outputs": outputs, "data_format": fmt, "teacher_dir": teacher_dir,
          "teacher_checkpoint": checkpoint_path,
          **({"ensemble": [{"teacher_dir": d, "teacher_checkpoint": c} for d, c in members]}
             if members else {}),
          "shards": {s: [shard.name for shard in data_meta.splits[s].shards]
                     for s in splits}}
  records.write_json(os.path.join(out_dir, records.METADATA_FILE), meta)
  return meta


# ModelSpec fields that teachers of one ensemble share: what they read and what they give.
_SAME_IO = ("task", "format", "feature_params", "normalization", "num_classes", "classes",
            "vocabulary", "output_frame_seconds")


def _check_same_io(spec, teacher_dir: str, other_dir: str) -> None:
  """ValueError naming the fields in which ``other_dir``'s teacher reads or gives
  other things than ``teacher_dir``'s (``spec``)."""
  from kws_tf import model_dir as model_dir_lib
  differ = model_dir_lib.differing_fields(model_dir_lib.read_spec(other_dir), spec, _SAME_IO)
  if differ:
    raise ValueError(f"the teachers {teacher_dir} and {other_dir} of the ensemble differ in "
                     f"{', '.join(differ)}: they must read the same input and give the same "
                     "outputs")


def _check_extend(extend: str, out_dir: str, params: dict, views: int) -> int:
  """The views of the finished guidance ``extend`` that a run of ``params``
  (``create_guidance``'s plan) extends to ``views``; ValueError naming
  ``extend`` and what differs when it cannot."""
  if not views:
    raise ValueError("extending guidance (--extend) needs --views")
  if os.path.abspath(extend) == os.path.abspath(out_dir):
    raise ValueError(f"--extend={extend} is the output folder; write the extended guidance "
                     "to another --out_dir")
  path = os.path.join(extend, records.METADATA_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{extend} holds no finished guidance ({records.METADATA_FILE} missing)")
  base = records.read_json(path)
  if not 0 < base.get("views", 0) < views:
    raise ValueError(f"{extend} holds guidance of {base.get('views', 0)} views; extending it "
                     f"needs more than that and at least one (--views={views})")
  differ = [k for k in ("kind", "features", "dtype", "teacher_fingerprint", "data_fingerprint",
                        "view_seed", "augment", "babble_split") if base.get(k) != params[k]]
  missing = [s for s in params["splits"] if s not in base.get("splits", [])]
  if differ or missing:
    what = ", ".join(differ + [f"split {s} missing" for s in missing])
    raise ValueError(f"{extend} holds views made differently (differs in: {what}); it "
                     "cannot be extended by this run")
  return int(base["views"])


def _write_locally(writer: "guidance_shards.GuidanceWriter", todo: List[str], data_meta: records.RecordsMetadata,
                   splits: List[str], kind: str, views: int) -> None:
  """Writes the guidance of the data shards ``todo`` in this process, with a progress bar
  over every shard of ``splits`` (counting teacher inputs: clips, or the ``views``
  computed per clip)."""
  from tqdm import tqdm
  per_example = views or 1
  total = sum(data_meta.splits[s].examples for s in splits)
  with tqdm(total=total * per_example, unit="view" if views else "ex",
            desc=f"guidance ({kind})", dynamic_ncols=True) as bar:
    bar.update((total - sum(_shard_examples(data_meta, p) for p in todo)) * per_example)
    for path in todo:
      writer.write(path, bar.update)


def _shard_examples(data_meta: records.RecordsMetadata, path: str) -> int:
  """Examples of the data shard at ``path``, from the data's metadata."""
  name = os.path.basename(path)
  return next(shard.examples for split in data_meta.splits.values()
              for shard in split.shards if shard.name == name)
