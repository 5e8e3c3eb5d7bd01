"""TFRecord creation jobs: synthetic corpus, corpus readers, the converter."""
import kws_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
