"""Exact per-replica arithmetic under a `tf.distribute` strategy.

The self-regulated step needs a few operations that stay exact however a batch
is split over replicas and workers: a global participant count, an optimizer
update that is skipped on every replica at once, per-sample counters indexed by
sample id, and setting such a counter to an exact value. Each is the identity
(or the plain operation) without a strategy.
"""

import tensorflow as tf


def apply_if(optimizer, grads, variables, should_apply):
  """`optimizer.apply(grads, variables)` only where `should_apply` is true.

  The skipped branch does nothing at all: no weight, slot or iteration changes.
  Under a distribution strategy the optimizer synchronises replicas with
  `merge_call`, which TensorFlow forbids inside a replica-context `tf.cond`;
  as Keras' own `LossScaleOptimizer` does, the condition is therefore taken in
  cross-replica context. `should_apply` must be identical on every replica.
  """

  def no_op():
    return tf.no_op()

  if not tf.distribute.has_strategy() or tf.__internal__.distribute.strategy_supports_no_merge_call():

    def apply_fn():
      optimizer.apply(grads, variables)
      return tf.no_op()

    tf.cond(should_apply, apply_fn, no_op)
    return

  def cross_replica(distribution, grads, should):
    flag = distribution.experimental_local_results(should)[0]

    def apply_fn():
      distribution.extended.call_for_each_replica(
          lambda g: optimizer.apply(g, variables), args=(grads,))
      return tf.no_op()

    tf.cond(flag, apply_fn, no_op)

  tf.distribute.get_replica_context().merge_call(cross_replica, args=(grads, should_apply))


def global_sum(value):
  """Sum of a per-replica scalar over all replicas (identity without a strategy)."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return value
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def scatter_add_by_id(variable, ids, values):
  """variable[ids] += values for a per-sample [N] state variable.

  A single (non-distributed) variable takes a sparse update, O(batch). An
  on-read variable under a strategy does not implement `scatter_add`, so it
  takes a dense [N] delta on the local replica's copy, which stays exact
  because reads sum the replicas.
  """
  target = getattr(variable, "value", variable)
  if isinstance(target, tf.Variable) and not isinstance(target, tf.distribute.DistributedValues):
    target.scatter_add(tf.IndexedSlices(tf.cast(values, target.dtype), ids))
  else:
    variable.assign_add(tf.scatter_nd(tf.expand_dims(ids, 1), tf.cast(values, variable.dtype),
                                      tf.shape(variable, out_type=tf.int32)))


def on_read_sum_assigner(variable):
  """A traced function that gives an on-read SUM `variable` an exact value.

  Assigning such a variable in cross-replica context divides the value by the
  replica count (integer division would lose counts), so each replica's copy
  is written from inside a replica context instead: all of the value on
  replica 0, zeros elsewhere. Build one per variable and keep it with the
  variable's owner (one trace, not one per call); run it with
  `assign_on_read_sum`.
  """

  @tf.function
  def assign(new_value):
    first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
    variable.assign(tf.where(first, new_value, tf.zeros_like(new_value)))

  return assign


def assign_on_read_sum(strategy, assigner, value):
  """Runs an `on_read_sum_assigner` on every replica of `strategy` with `value`."""
  strategy.run(assigner, args=(tf.constant(value),))
