"""The one custom train loop and its learning-rate schedules."""
