"""Evaluation: KWS and CTC metrics, CTC decoding and forced alignment, plots."""
