"""One model's evaluation on one split, with files, and a side-by-side table of several.

``evaluate_model`` rebuilds a trained model from its model dir (``model.json``
and the best weights), runs it over a split of TFRecords in the model's own
feature format, and writes ``<model_dir>/eval/<split>/``: ``results.json``,
and for kws ``confusion.txt``, ``confusion.png`` and ``det.png``.
``side_by_side`` renders several results as one Markdown table.
"""
import os
import sys
from typing import List

from kws_tf import data, records, text
from kws_tf import model_dir as model_dir_lib
from kws_tf.distill import quantization
from kws_tf.evaluation import metrics, plots, runner


def evaluate_model(model_dir: str, data_dir: str, split: str, beam_width: int,
                   batch_size: int, checkpoint: str = "best", quantize_bits: int = 0,
                   bucket_size: int = 256, offset_seconds: float = 0.3,
                   offset_seed: int = 0, lm_decoder=None) -> dict:
  """Evaluates one model dir; writes ``eval/<split>/`` and returns the results.

  With ``quantize_bits`` > 0 the weights are first quantized once, with
  deterministic rounding, to that many bits in buckets of ``bucket_size``
  (post-training quantization, deep-speech-compression's baseline for
  quantized distillation); the output goes to ``eval/<split>-q<bits>/`` and
  the results hold the size report.

  kws records with raw clips and context are also scored on windows moved
  off the clip's centre by up to ``offset_seconds`` (``data.offset_dataset``,
  seeded by ``offset_seed``; 0: not): ``results["offset"]`` holds accuracy,
  keyword recall and false accepts there, beside the centred ones.

  ctc: greedy WER / CER, beam search's with ``beam_width`` > 0, and with
  ``lm_decoder`` (a ``decoding.CtcDecoder`` named ``beam_lm``) those of beam
  search with its language model (``runner.score``).
  """
  spec, metadata, parse = model_dir_lib.model_records(model_dir, data_dir)
  model = model_dir_lib.load_trained_model(model_dir, checkpoint)
  size = None
  if quantize_bits:
    variables = quantization.post_training_quantize(model, quantize_bits, bucket_size)
    size = {"bits": quantize_bits, "bucket_size": bucket_size, "post_training": True,
            **quantization.model_size_bits(model, variables, quantize_bits, bucket_size)}
  paths = data.shard_paths(data_dir, spec.format, split, metadata)
  dataset = data.records_dataset(paths, metadata.compression).map(parse)
  dataset = dataset.padded_batch(batch_size)
  vocabulary = text.Vocabulary(spec.vocabulary["symbols"]) if spec.task == "ctc" else None
  predictions = runner.predict(model, dataset, spec.task)
  results = runner.score(spec.task, predictions, spec.classes or (), vocabulary, beam_width,
                         lm_decoder=lm_decoder if spec.task == "ctc" else None)
  results.update(task=spec.task, model_dir=model_dir, model=spec.name, role=spec.role,
                 parameters=int(model.count_params()), split=split, data_dir=data_dir,
                 checkpoint=checkpoint, command=" ".join(sys.argv))
  if size is not None:
    results["quantization"] = size
  if spec.task == "kws" and offset_seconds > 0 and data.has_context(metadata):
    front_end = data.WaveformFrontEnd(spec.feature_params, spec.normalization)
    moved = runner.predict(model, data.offset_dataset(data_dir, split, front_end, offset_seconds,
                                                      offset_seed, batch_size), "kws")
    negative = spec.classes.index(text.NEGATIVE_LABEL)
    results["offset"] = {
        "max_seconds": offset_seconds, "seed": offset_seed,
        "accuracy": float((moved["logits"].argmax(-1) == moved["labels"]).mean()),
        **runner.keyword_decisions(moved["logits"], moved["labels"], negative)}
  out = os.path.join(model_dir, "eval", f"{split}-q{quantize_bits}" if quantize_bits else split)
  results["output_dir"] = out
  os.makedirs(out, exist_ok=True)
  if spec.task == "kws":
    report = results["report"]
    table = metrics.format_confusion_matrix(report["confusion_matrix"], report["class_names"])
    with open(os.path.join(out, "confusion.txt"), "w", encoding="utf-8") as f:
      f.write(table + "\n")
    plots.plot_confusion_matrix(report["confusion_matrix"], report["class_names"],
                                os.path.join(out, "confusion.png"),
                                title=f"{spec.name} on {split}")
    if results["detection"]:
      negative = report["class_names"].index(text.NEGATIVE_LABEL)
      curve = metrics.det_curve(runner.softmax(predictions["logits"]), predictions["labels"],
                                negative)
      plots.plot_det_curve([(far, frr) for _, far, frr in curve], os.path.join(out, "det.png"),
                           title=f"{spec.name} on {split}")
  records.write_json(os.path.join(out, "results.json"), results)
  return results


def side_by_side(all_results: List[dict]) -> str:
  """A Markdown table of the models' headline metrics."""
  task = all_results[0]["task"]
  if task == "kws":
    header = ["model", "role", "parameters", "accuracy", "macro-F1", "keyword recall",
              "false accepts", "offset: accuracy", "offset: keyword recall", "FRR@1%FAR",
              "FRR@5%FAR"]
  else:
    header = ["model", "role", "parameters", "CER", "WER", "beam CER", "beam WER"]
    with_lm = any("beam_lm_cer" in r for r in all_results)
    if with_lm:
      header += ["beam+LM CER", "beam+LM WER"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in all_results:
    name = f"{r['model']} ({os.path.basename(os.path.normpath(r['model_dir']))})"
    if task == "kws":
      detection = r["detection"]
      frr = [f"{detection[k]['frr']:.3f}" if k in detection else "n/a"
             for k in ("frr_at_far_0.01", "frr_at_far_0.05")]
      offset = r.get("offset")
      moved = ([f"{offset['accuracy']:.4f}", f"{offset['keyword_recall']:.4f}"] if offset
               else ["n/a", "n/a"])
      cells = [name, r["role"], f"{r['parameters']:,}", f"{r['accuracy']:.4f}",
               f"{r['macro_f1']:.4f}", f"{r['keyword_recall']:.4f}",
               f"{r['false_accepts']:.1%}", *moved, *frr]
    else:
      cells = [name, r["role"], f"{r['parameters']:,}", f"{r['cer']:.4f}", f"{r['wer']:.4f}",
               f"{r.get('beam_cer', float('nan')):.4f}", f"{r.get('beam_wer', float('nan')):.4f}"]
      if with_lm:
        cells += [f"{r.get('beam_lm_cer', float('nan')):.4f}",
                  f"{r.get('beam_lm_wer', float('nan')):.4f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
