"""Keras models: the Whisper encoder port, teachers and students.

Every trainable model (teacher or student) follows one contract, so that the
train loop, the guidance writer, evaluation and export treat them alike:

Inputs (a dict):
  ``features``   float32 ``[batch, frames, channels]``, frames every 10 ms
                 (student formats) or Whisper log-mel frames (teachers).
  ``num_frames`` int32 ``[batch]``, valid frames of each example; frames past
                 it are zero padding and must not change the valid outputs.
Outputs (a dict, float32 even under a mixed-precision policy):
  ``logits``     kws: ``[batch, num_classes]``;
                 ctc: ``[batch, logit_frames, vocabulary]`` (blank is index 0).
  ``logit_frames`` ctc only: int32 ``[batch]``, valid frames of ``logits``.
  ``projection`` optional: the feature-projector output used for feature
                 distillation; kws ``[batch, projection_dim]``,
                 ctc ``[batch, logit_frames, projection_dim]``.

Models are built by name through ``registry.build``.
"""
