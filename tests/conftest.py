"""Shared test set-up: Keras 2 before TensorFlow, a quiet TensorFlow log."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
