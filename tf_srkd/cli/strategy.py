"""Creating the one `tf.distribute.Strategy` of a run (called from `main` only)."""

import json
import logging
import os

import tensorflow as tf


def configure_cpu_replicas(count: int):
  """Splits the first CPU into `count` logical devices (before TF initialises).

  Lets `MirroredStrategy` be exercised on a machine without GPUs.
  """
  if count <= 1:
    return
  cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(
      cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def make_strategy(name: str, cpu_replicas: int = 0):
  """Returns the strategy `name` (auto | default | mirrored | multi_worker).

  auto: `MirroredStrategy` when more than one GPU (or `cpu_replicas` > 1) is
  visible, else the default strategy. multi_worker:
  `MultiWorkerMirroredStrategy` configured by the `TF_CONFIG` environment
  variable (the standard engine; this package adds no coordination of its own).
  """
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  configure_cpu_replicas(cpu_replicas)
  gpus = tf.config.list_logical_devices("GPU")
  if name == "mirrored" or (name == "auto" and (len(gpus) > 1 or cpu_replicas > 1)):
    devices = [d.name for d in gpus] if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
  else:
    strategy = tf.distribute.get_strategy()
  logging.info("strategy: %s with %d replica(s)", type(strategy).__name__,
               strategy.num_replicas_in_sync)
  return strategy


def is_chief(strategy) -> bool:
  """True for the worker that writes outputs and tracks runs."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not os.environ.get("TF_CONFIG"):
    return True
  task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
  cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
  if "chief" in cluster:
    return task.get("type") == "chief"
  return task.get("type") == "worker" and int(task.get("index", 0)) == 0
