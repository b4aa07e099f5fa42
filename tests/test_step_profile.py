"""benchmarks/step_profile.py's bookkeeping: which layer an XLA thunk belongs to, and how wall time is
shared among the thunks running at once (the profile itself needs torch and minutes: not run here)."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

step_profile = pytest.importorskip("step_profile")


def test_wall_time_is_shared_evenly_among_the_ops_running_at_once():
  # a: 0–4, b: 2–6 (ps), over 2 steps. 0–2 a alone, 2–4 both (1 each), 4–6 b alone: a 3, b 3.
  rows = step_profile.shared_wall_time([(0, 4e9, "a"), (2e9, 6e9, "b")], steps=2)
  assert rows == {"a": 1.5, "b": 1.5}  # ms per step
  assert step_profile.shared_wall_time([(0, 1e9, "a"), (5e9, 7e9, "a")], steps=1) == {"a": 3.0}


@pytest.mark.parametrize(
  "names,expected",
  [
    (["jit(step)/jvp(teacher)/MaxoutNet/conv2/conv/conv_general_dilated"], ("teacher", "conv2", "forward")),
    (["jit(step)/jvp(MaxoutNet)/conv1/max"], ("student", "conv1", "forward")),
    (["jit(step)/transpose(jvp(MaxoutNet))/conv3/pad", "jit(step)/mul"], ("student", "conv3", "backward")),
    (["jit(step)/jvp(jit(log_softmax))/sub"], ("loss", "", "forward")),
    (["jit(step)/transpose(jvp(jit(log_softmax)))/mul"], ("loss", "", "backward")),
    (["jit(step)/sqrt"], ("update", "", "optimizer, max-norm")),
  ],
)
def test_a_thunk_goes_to_the_network_layer_and_pass_of_its_name_stack(names, expected):
  assert step_profile.jax_attribution(names) == expected


def test_fused_ops_lend_their_names_to_the_fusion_that_runs_them():
  def loss(w, x):
    with jax.named_scope("teacher"):
      t = jnp.tanh(x @ w)
    return jnp.sum(t * jnp.exp(x @ w))

  x, w = jnp.ones((4, 3)), jnp.ones((3, 2))
  text = jax.jit(jax.grad(loss)).lower(w, x).compile().as_text()
  names = step_profile.hlo_op_names(text)
  assert names and all(isinstance(v, list) for v in names.values())
  assert any(any("teacher" in n for n in ops) for ops in names.values())


def test_the_teachers_forward_pass_carries_its_roles_name_in_the_program():
  """`teachers.logits` runs the teacher under `jax.named_scope(role)`, which is how the profile tells its
  ops from the student's (both are the same module class)."""
  import types

  from fitnets_jax import teachers
  from fitnets_jax.models.maxout import ConvSpec, MaxoutNet
  from fitnets_jax.network import network

  net = network("toy", MaxoutNet(convs=(ConvSpec(4, 2, 3, 1),), num_classes=10), (8, 8, 1))
  params, stats = net.init(jax.random.PRNGKey(0))
  ctx = types.SimpleNamespace(teachers={"teacher": net})
  teaching = {"teacher": {"params": params, "batch_stats": stats}}
  logits = lambda images: teachers.logits(ctx, teaching, {"image": images}, "teacher")
  # the lowered program's locations (a compiled one could come from the persistent cache, old names and all)
  text = jax.jit(logits).lower(jnp.ones((2, 8, 8, 1))).as_text(debug_info=True)
  assert "teacher/MaxoutNet/conv1/conv/conv_general_dilated" in text
  assert step_profile.jax_attribution(["jit(step)/jvp(teacher)/MaxoutNet/conv1/conv/conv_general_dilated"]) == (
    "teacher",
    "conv1",
    "forward",
  )
