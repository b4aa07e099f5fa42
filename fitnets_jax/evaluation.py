"""Test and validation metrics of a stage's networks, data-parallel, with padded final batches
masked out."""

import jax
import jax.numpy as jnp

from fitnets_jax import compiler, data
from fitnets_jax import network as network_lib
from fitnets_jax.parallel import batch_sharding, prefetch_to_device, replicated


def network_accuracy(net):
  """The default evaluation: per-example hits of `net` ({"accuracy": …})."""

  def evaluation(variables, images, labels):
    return {"accuracy": jnp.argmax(network_lib.predict(net, variables, images), -1) == labels}

  return evaluation


def stage_evaluation(exp, stage, params, batch_stats):
  """(key, evaluation, variables) that measure what `stage` trains: its own evaluation of all its
  variables, or the accuracy of the network it outputs."""
  if stage.evaluation:
    return ("stage", stage.name), stage.evaluation, {"params": params, "batch_stats": batch_stats}
  net = exp.teachers.get(stage.trains, exp.student)
  return ("network", net.name), network_accuracy(net), network_lib.variables(*stage.output(params, batch_stats))


class Evaluator:
  """Test (or validation) metrics, data-parallel, with padded final batches masked out."""

  def __init__(self, exp):
    self.exp = exp
    self._steps = {}

  def step(self, key, evaluation):
    """The jitted evaluation step: (variables, batch) → ({metric: sum over the batch}, examples)."""
    if key not in self._steps:

      def step(variables, batch):
        values = evaluation(variables, batch["image"], batch["label"])
        sums = {k: jnp.sum(v.astype(jnp.float32) * batch["mask"]) for k, v in values.items()}
        return sums, jnp.sum(batch["mask"])

      rep = replicated(self.exp.mesh)
      self._steps[key] = compiler.jit(step, in_shardings=(rep, batch_sharding(self.exp.mesh)), out_shardings=rep)
    return self._steps[key]

  def metrics(self, key, evaluation, variables, split="test"):
    """{metric: mean over the split} of `evaluation(variables, images, labels)`'s per-example values."""
    step = self.step(key, evaluation)
    totals = jax.device_get(
      [
        step(variables, b)
        for b in prefetch_to_device(data.eval_batches(self.exp.data, self.exp.local_eval_batch, split), self.exp.mesh)
      ]
    )
    count = sum(float(c) for _, c in totals)
    return {k: float(sum(float(t[k]) for t, _ in totals) / count) for k in totals[0][0]}

  def accuracy(self, net, params, batch_stats, split="test"):
    return self.metrics(
      ("network", net.name), network_accuracy(net), network_lib.variables(params, batch_stats), split
    )["accuracy"]
