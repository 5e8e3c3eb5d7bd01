"""The error of the export package."""


class ExportError(RuntimeError):
  """An export that cannot be made or that failed its accuracy gate."""
