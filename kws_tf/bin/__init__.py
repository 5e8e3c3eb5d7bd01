"""Command-line programs (absl apps); each has a console script in setup.py."""
