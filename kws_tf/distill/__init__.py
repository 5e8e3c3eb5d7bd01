"""Distillation: loss terms that let tiny students learn from PhoWhisper teachers."""
