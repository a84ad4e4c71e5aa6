"""MLflow tracking (placeholder until the tracking issue lands)."""

from tf_srkd import tracking


def connect(config):
  del config
  return tracking.NullTracker()
