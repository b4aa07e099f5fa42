"""The hint stage: what it trains, what it freezes, what it computes; the λ schedule."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fitnets_jax import FitnetsError, experiment, losses, optim, parallel, train_step
from fitnets_jax.config import base_config
from fitnets_jax.methods import shared
from fitnets_jax.models import _SPECS
from fitnets_jax.models.maxout import MaxoutConv

from conftest import tiny_digits
from helpers import run_steps

STUDENTS = [
  ("digits_student_bn", "conv4"),  # batch norm: statistics must freeze too
  ("digits_student", "conv5"),
]  # the quick start's student


@pytest.fixture(scope="module", params=STUDENTS, ids=[s for s, _ in STUDENTS])
def digits_exp(request, tmp_path_factory):
  student, guided = request.param
  config = tiny_digits(**{"student.model": student, "hint.student_layer": guided})
  return experiment.prepare(config, str(tmp_path_factory.mktemp("exp")))


def stage_named(exp, name):
  return next(s for s in exp.stages if s.name == name)


def random_teacher(exp):
  """The step's teacher argument for one randomly initialised teacher: {"teacher": variables, "mu": [1]}."""
  params, stats = exp.teacher.init(jax.random.PRNGKey(7))
  return jax.device_put(
    {"teacher": {"params": params, "batch_stats": stats}, "mu": np.ones(1, np.float32)}, parallel.replicated(exp.mesh)
  )


def layers_around(exp):
  """Top-level student layers up to and including the guided layer, and after it."""
  names = [l.name for l in exp.student.layers if "/" not in l.name]
  cut = names.index(exp.config.hint.student_layer) + 1
  return names[:cut], names[cut:]


def test_hint_stage_freezes_everything_after_the_guided_layer_bit_for_bit(digits_exp):
  stage = stage_named(digits_exp, "hint")
  before, after, _ = run_steps(digits_exp, stage, random_teacher(digits_exp), 5)
  trained, frozen = layers_around(digits_exp)
  assert frozen[-2:] == ["fc", "logits"]
  for layer in frozen:
    for a, b in zip(jax.tree.leaves(before.params["student"][layer]), jax.tree.leaves(after.params["student"][layer])):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(
      jax.tree.leaves(before.batch_stats["student"].get(layer, {})),
      jax.tree.leaves(after.batch_stats["student"].get(layer, {})),
    ):
      np.testing.assert_array_equal(a, b)
  batch_norm = bool(before.batch_stats["student"])
  for layer in trained:
    kernel_b, kernel_a = (
      before.params["student"][layer]["conv"]["kernel"],
      after.params["student"][layer]["conv"]["kernel"],
    )
    assert not np.array_equal(kernel_b, kernel_a), layer
    if batch_norm:
      assert not np.array_equal(
        before.batch_stats["student"][layer]["bn"]["mean"], after.batch_stats["student"][layer]["bn"]["mean"]
      ), layer
  assert batch_norm == (digits_exp.student.name == "digits_student_bn")
  assert not np.array_equal(before.params["regressor0"]["conv"]["kernel"], after.params["regressor0"]["conv"]["kernel"])
  # Frozen leaves carry no optimizer state (set_to_zero), trained ones do.
  assert jax.tree.leaves(after.opt_state.inner_states["freeze"]) == []


def test_hint_stage_pays_only_for_the_two_prefixes(digits_exp):
  """XLA FLOPs of our hint step ≤ 1.15 × a hand-written step over the two prefixes only."""
  exp = digits_exp
  stage = stage_named(exp, "hint")
  teacher = random_teacher(exp)
  _, _, ours = run_steps(exp, stage, teacher, 0)
  trained, _ = layers_around(exp)
  s_spec, t_spec = _SPECS[exp.student.name], _SPECS["digits_teacher"]
  x = jnp.zeros((exp.local_batch, 8, 8, 1))

  class Prefix(nn.Module):
    specs: tuple
    batch_norm: bool

    @nn.compact
    def __call__(self, x, train):
      for i, spec in enumerate(self.specs, start=1):
        x = MaxoutConv(spec, batch_norm=self.batch_norm, name=f"conv{i}")(x, train)
      return x

  s_prefix_net = Prefix(s_spec["convs"][: len(trained)], s_spec.get("batch_norm", False))
  t_prefix_net = Prefix(t_spec["convs"][:2], True)
  s_params, s_stats = exp.student.init(jax.random.PRNGKey(0))
  s_prefix = {k: s_params[k] for k in trained}
  s_prefix_stats = {k: s_stats[k] for k in trained if k in s_stats}
  t_prefix = {k: teacher["teacher"]["params"][k] for k in ("conv1", "conv2")}
  t_prefix_stats = {k: teacher["teacher"]["batch_stats"][k] for k in t_prefix}
  reg = stage.init(jax.random.PRNGKey(0), None)[0]["regressor0"]

  def reference_loss(params, x, full):
    s = s_prefix_net.apply({"params": params["s"], "batch_stats": s_prefix_stats}, x, True, mutable=["batch_stats"])[0]
    t = t_prefix_net.apply({"params": t_prefix, "batch_stats": t_prefix_stats}, x, False)
    r = (
      jax.lax.conv_general_dilated(
        s, params["r"]["conv"]["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
      + params["r"]["conv"]["bias"]
    )
    r = r.reshape(r.shape[:-1] + (r.shape[-1] // 2, 2)).max(-1)
    value = losses.hint_loss(t, r, exp.config.hint.reduction)
    if full:  # Also run both whole networks: what the hint stage must *not* pay for.
      student_vars = {"params": params["s_all"], **({"batch_stats": s_stats} if s_stats else {})}
      value += 1e-9 * (
        jnp.sum(exp.student.module.apply(student_vars, x, True, mutable=["batch_stats"])[0])
        + jnp.sum(exp.teacher.module.apply(teacher["teacher"], x, False))
      )
    return value

  def flops(full):
    params = {"s": s_prefix, "r": reg, **({"s_all": s_params} if full else {})}
    tx = optax.rmsprop(1e-3, decay=0.9)

    def step(params, opt_state, x):  # x is an argument: a constant input would be folded away
      grads = jax.grad(reference_loss)(params, x, full)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    args = (params, tx.init(params), x)
    return train_step.step_flops(jax.jit(step).lower(*args), step, args)

  prefixes, whole = flops(False), flops(True)
  print(
    f"hint step FLOPs: ours {ours:.4g}, two prefixes {prefixes:.4g} ({ours / prefixes:.3f}×), "
    f"whole networks {whole:.4g}"
  )
  assert prefixes < 0.85 * whole  # the test can tell the two apart
  assert ours <= 1.15 * prefixes, (ours, prefixes, whole)


def lam_cfg(**kw):
  c = base_config().kd
  c.update(kw)
  return c


def test_lambda_schedule_start_middle_end():
  lam = shared.lambda_schedule(lam_cfg(), num_steps=100, steps_per_epoch=10)
  assert float(lam(0)) == pytest.approx(4.0)
  assert float(lam(50)) == pytest.approx(2.5)
  assert float(lam(100)) == pytest.approx(1.0)
  assert float(lam(150)) == pytest.approx(1.0)


def test_lambda_schedule_with_a_delayed_bounded_decay():
  # FitNets CIFAR: constant until epoch 5, then linear down to 1 at epoch 5 + 10.
  lam = shared.lambda_schedule(lam_cfg(lambda_decay_begin_epochs=5.0, lambda_decay_epochs=10.0), 1000, 10)
  assert [float(lam(s)) for s in (0, 50, 100, 150, 999)] == pytest.approx([4.0, 4.0, 2.5, 1.0, 1.0])


def test_lambda_schedule_must_not_increase():
  with pytest.raises(FitnetsError, match="anneals λ downwards"):
    shared.lambda_schedule(lam_cfg(lambda_start=1.0, lambda_end=4.0), 100, 10)


def test_max_norm_projects_columns_above_the_limit():
  tx = optim.max_norm(conv=1.0, dense=2.0, logits=0.0)
  params = {
    "c": {"kernel": jnp.zeros((1, 1, 2, 2))},
    "d": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)},
    "logits": {"kernel": jnp.zeros((2, 2))},
  }
  updates = {
    "c": {"kernel": jnp.array([[[[3.0, 0.1], [4.0, 0.1]]]])},
    "d": {"kernel": jnp.array([[3.0, 1.0], [4.0, 0.0]]), "bias": jnp.array([9.0, 9.0])},
    "logits": {"kernel": jnp.full((2, 2), 5.0)},
  }
  new = optax.apply_updates(params, tx.update(updates, tx.init(params), params)[0])
  np.testing.assert_allclose(new["c"]["kernel"][0, 0, :, 0], [0.6, 0.8], rtol=1e-6)  # norm 5 → 1
  np.testing.assert_allclose(new["c"]["kernel"][0, 0, :, 1], [0.1, 0.1])  # under the limit
  np.testing.assert_allclose(new["d"]["kernel"][:, 0], [1.2, 1.6], rtol=1e-6)  # norm 5 → 2
  np.testing.assert_allclose(new["d"]["bias"], [9.0, 9.0])  # biases untouched
  np.testing.assert_allclose(new["logits"]["kernel"], 5.0)  # limit 0: off


def test_max_norm_per_layer_overrides_the_kind_limits():
  tx = optim.max_norm(conv=1.0, dense=0.0, logits=0.0, layers={"conv1": 0.5, "logits": 2.0})
  params = {n: {"conv": {"kernel": jnp.zeros((1, 1, 2, 1))}} for n in ("conv1", "conv2")}
  params["logits"] = {"kernel": jnp.zeros((2, 1))}
  column = jnp.array([3.0, 4.0]).reshape(1, 1, 2, 1)  # norm 5
  updates = {"conv1": {"conv": {"kernel": column}}, "conv2": {"conv": {"kernel": column}}}
  updates["logits"] = {"kernel": column.reshape(2, 1)}
  new = optax.apply_updates(params, tx.update(updates, tx.init(params), params)[0])
  np.testing.assert_allclose(new["conv1"]["conv"]["kernel"].ravel(), [0.3, 0.4], rtol=1e-6)  # its own 0.5
  np.testing.assert_allclose(new["conv2"]["conv"]["kernel"].ravel(), [0.6, 0.8], rtol=1e-6)  # conv's 1.0
  np.testing.assert_allclose(new["logits"]["kernel"].ravel(), [1.2, 1.6], rtol=1e-6)  # 2.0 though logits=0


def test_the_maxout_teacher_recipe_matches_momentum_sgd_written_out():
  # SGD, momentum 0.5 → 0.7 over epochs 1 → 3 (4 steps per epoch), lr 0.1 falling linearly to 10 % over
  # epochs 1 → 3, conv learning rate × 0.05: trace t ← g + μ_s·t, update −lr_s·t (× 0.05 for the conv's
  # kernel and bias), written out in NumPy from the yaml's numbers.
  cfg = base_config().stages.teacher.optimizer
  cfg.update(
    dict(
      name="sgd",
      learning_rate=0.1,
      momentum=0.5,
      momentum_final=0.7,
      momentum_ramp_epochs=[1.0, 3.0],
      conv_lr_scale=0.05,
      schedule="linear",
      boundaries_epochs=[1.0, 3.0],
      decay_factor=0.1,
    )
  )
  tx = optim.optimizer(cfg, 20, 4, "stages.teacher.optimizer")
  rng = np.random.default_rng(0)
  params = {"conv1": {"kernel": jnp.zeros((1, 1, 1, 2)), "bias": jnp.zeros(2)}, "fc": {"kernel": jnp.zeros((2, 2))}}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(14)]
  state = tx.init(params)
  expected = jax.tree.map(np.asarray, params)
  trace = jax.tree.map(np.zeros_like, expected)
  p = params
  for step, g in enumerate(grads):
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    mu = 0.5 + 0.2 * min(max(step - 4, 0) / 8, 1.0)
    lr = 0.1 * (1 - 0.9 * min(max(step - 4, 0) / 8, 1.0))
    trace = jax.tree.map(lambda t, gg: np.asarray(gg) + mu * t, trace, g)
    scale = {"conv1": 0.05, "fc": 1.0}
    expected = {k: jax.tree.map(lambda e, t: e - lr * scale[k] * t, expected[k], trace[k]) for k in expected}
  for k in expected:
    for leaf in expected[k]:
      np.testing.assert_allclose(p[k][leaf], expected[k][leaf], rtol=1e-5, atol=1e-7)


def test_the_exponential_schedule_divides_the_rate_every_step_down_to_its_floor():
  cfg = base_config().stages.teacher.optimizer
  cfg.update(dict(schedule="exponential", learning_rate=0.05, decay_factor=1 / 1.00004, min_learning_rate=0.049))
  lr = optim.learning_rate(cfg, 10_000, 100, "stages.teacher.optimizer")
  np.testing.assert_allclose(float(lr(100)), 0.05 / 1.00004**100, rtol=1e-5)
  assert float(lr(5000)) == pytest.approx(0.049)  # 0.05 / 1.00004^5000 = 0.0409: floored


def test_input_dropout_keeps_the_image_unscaled_and_scales_hidden_inputs():
  import types

  from fitnets_jax.models.maxout import input_dropout

  module = types.SimpleNamespace(make_rng=lambda name: jax.random.PRNGKey(3))
  x = jnp.ones((200, 10, 10, 5))
  image = np.asarray(input_dropout(module, x, 0.8, 1.0, True))
  hidden = np.asarray(input_dropout(module, x, 0.5, 2.0, True))
  assert set(np.unique(image)) == {0.0, 1.0} and abs(image.mean() - 0.8) < 0.01  # pylearn2: the image is not rescaled
  assert set(np.unique(hidden)) == {0.0, 2.0} and abs(hidden.mean() - 1.0) < 0.02
  assert np.all(np.asarray(input_dropout(module, x, 0.5, 2.0, False)) == 1.0)  # evaluation: untouched


def test_input_dropout_needs_one_probability_per_weight_layer():
  from fitnets_jax import models

  net = models.get_model("maxout_cifar_teacher", 10, input_dropout=(0.8, 0.5, 0.5, 0.5, 0.5))
  assert net.input_dropout == (0.8, 0.5, 0.5, 0.5, 0.5)
  with pytest.raises(FitnetsError, match=r"teacher.input_dropout=\[0.8, 0.5\]: .*5 for 'maxout_cifar_teacher'"):
    models.get_model("maxout_cifar_teacher", 10, key="teacher.model", input_dropout=(0.8, 0.5))
  with pytest.raises(FitnetsError, match=r"'resnet8' is not one"):
    models.get_model("resnet8", 10, key="teacher.model", input_dropout=(0.8,))


@pytest.mark.parametrize("name,momentum,dropout", [("cifar10", 0.65, 5), ("svhn", 0.6, 5), ("mnist", 0.7, 4)])
def test_the_paper_configs_train_their_maxout_teachers_the_yamls_way(name, momentum, dropout):
  from conftest import load_config

  c = load_config(name)
  opt = c.stages.teacher.optimizer
  assert (opt.name, opt.momentum, opt.momentum_final, list(opt.momentum_ramp_epochs)) == (
    "sgd",
    0.5,
    momentum,
    [1, 250],
  )
  assert dict(opt.max_norm_layers) == {"conv1": 0.9, "conv2": 1.9365, "conv3": 1.9365, "fc": 1.9, "logits": 1.9365}
  assert opt.conv_lr_scale == (1.0 if name == "mnist" else 0.05)
  assert list(c.teacher.input_dropout) == [0.8] + [0.5] * (dropout - 1) and c.teacher.dropout == 0.0


def test_the_floored_rmsprop_matches_pylearn2s_rule_written_out():
  # pylearn2's RMSProp (the FitNets yamls): ν ← 0.9ν + 0.1g², update −lr·g / max(√ν, 1/max_scaling).
  cfg = base_config().stages.hint.optimizer
  cfg.update(dict(name="rmsprop", learning_rate=0.005, decay=0.9, rms_floor=1e-5))
  tx = optim.optimizer(cfg, 10, 5, "stages.hint.optimizer")
  rng = np.random.default_rng(1)
  p = {"w": jnp.zeros(6)}
  grads = [{"w": jnp.asarray(rng.normal(size=6) * np.array([1, 1, 1e-6, 1e-7, 0, 1]), jnp.float32)} for _ in range(5)]
  state, expected, nu = tx.init(p), np.zeros(6), np.zeros(6)
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    nu = 0.9 * nu + 0.1 * np.asarray(g["w"], np.float64) ** 2
    expected -= 0.005 * np.asarray(g["w"]) / np.maximum(np.sqrt(nu), 1e-5)
  np.testing.assert_allclose(p["w"], expected, rtol=1e-5, atol=1e-9)
  # optax's rmsprop (ε added) differs exactly where √ν is near the floor: the tiny-gradient weights.
  plain = optim.optimizer(base_config().stages.hint.optimizer, 10, 5, "k")
  q, s = {"w": jnp.zeros(6)}, plain.init({"w": jnp.zeros(6)})
  for g in grads:
    u, s = plain.update(g, s, q)
    q = optax.apply_updates(q, u)
  relative = np.abs(np.asarray(q["w"]) - expected) / np.maximum(np.abs(expected), 1e-30)
  assert relative[3] > 0.5 and relative[0] < 1e-3  # 1e-7 gradients: a 10× smaller step with ε added


def test_the_regressor_takes_its_own_max_norm_and_no_conv_learning_rate_scale():
  # The authors' generateConvRegressor: max_kernel_norm 0.9, no W_lr_scale, while the student's convs are
  # scaled by 0.05 and limited to max_norm_conv.
  cfg = base_config().stages.hint.optimizer
  cfg.update(dict(name="sgd", learning_rate=1.0, conv_lr_scale=0.05, max_norm_conv=10.0))
  tx = optim.optimizer(cfg, 10, 5, "stages.hint.optimizer", regressor_limits={"regressor0": 0.9})
  kernel = lambda: {"conv": {"kernel": jnp.zeros((1, 1, 2, 1)), "bias": jnp.zeros(1)}}
  params = {"student": {"conv1": kernel()}, "regressor0": kernel()}
  grad = {"conv": {"kernel": -jnp.array([3.0, 4.0]).reshape(1, 1, 2, 1), "bias": -jnp.ones(1)}}
  new = optax.apply_updates(
    params, tx.update({"student": {"conv1": grad}, "regressor0": grad}, tx.init(params), params)[0]
  )
  np.testing.assert_allclose(new["student"]["conv1"]["conv"]["kernel"].ravel(), [0.15, 0.2], rtol=1e-6)  # × 0.05
  np.testing.assert_allclose(new["student"]["conv1"]["conv"]["bias"], [0.05], rtol=1e-6)
  np.testing.assert_allclose(new["regressor0"]["conv"]["kernel"].ravel(), [0.54, 0.72], rtol=1e-6)  # 5 → 0.9
  np.testing.assert_allclose(new["regressor0"]["conv"]["bias"], [1.0], rtol=1e-6)  # unscaled


def test_the_hint_stage_gives_the_regressor_hint_regressor_max_norm(digits_exp):
  stage = stage_named(digits_exp, "hint")
  params, _ = stage.init(jax.random.PRNGKey(0), None)
  labels = stage.param_labels(params)
  tx = optim.partitioned(stage.tx, labels)
  params["regressor0"] = jax.tree.map(lambda p: jnp.full_like(p, 10.0), params["regressor0"])
  new = optax.apply_updates(params, tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0])
  kernel = new["regressor0"]["conv"]["kernel"]
  norms = np.sqrt(np.sum(np.square(kernel), axis=(0, 1, 2)))
  np.testing.assert_allclose(norms, 0.9, rtol=1e-5)
  assert digits_exp.config.hint.regressor_max_norm == 0.9


@pytest.mark.parametrize("name", ["maxout_mnist_teacher", "fitnet_mnist"])
def test_the_mnist_yamls_models_have_untied_biases_and_the_regressor_copies_the_hint_layers(name):
  from fitnets_jax import features, hints, models
  from fitnets_jax.network import network

  net = network(name, models.get_model(name, 10), (28, 28, 1))
  params = net.abstract_variables()["params"]
  conv1 = next(l for l in net.layers if l.name == "conv1")
  assert not conv1.tied_bias and "bias" not in params["conv1"]["conv"]
  assert params["conv1"]["untied_bias"].shape == (24, 24, 32) if name == "fitnet_mnist" else (21, 21, 96)
  cifar = network("fitnet1", models.get_model("fitnet1", 10), (32, 32, 3))
  assert cifar.abstract_variables()["params"]["conv1"]["conv"]["bias"].shape == (32,)  # the CIFAR yamls: tied_b 1
  if name == "maxout_mnist_teacher":  # MNIST hint pair: the regressor onto the teacher's conv2 is untied too
    from conftest import load_config

    config = load_config("mnist")
    student = network("fitnet_mnist", models.get_model("fitnet_mnist", 10), (28, 28, 1))
    (pair,) = hints.pairs(config, student, {"teacher": net})
    reg = pair.regressor.init(jax.random.PRNGKey(0), jnp.zeros((1,) + pair.guided.shape))["params"]
    assert reg["untied_bias"].shape == pair.hint.shape[:2] + (96,) and "bias" not in reg["conv"]
    assert features.regressor_kernel(pair.guided, pair.hint) == (1, 1)


def test_the_paper_configs_follow_the_authors_data_and_student_recipes():
  from conftest import load_config

  cifar, svhn, mnist = (load_config(n) for n in ("cifar10", "svhn", "mnist"))
  assert cifar.dataset.shift == 4 and cifar.dataset.stats_examples == 0  # pad_randomized 4; ZCA on all 50K
  assert svhn.dataset.lcn_all_channels and svhn.dataset.validation_examples == 6000  # splitted_train: 598,388
  assert svhn.stages.teacher.epochs == 250  # the yaml's whole schedule
  for c in (cifar, svhn, mnist):
    for stage in ("hint", "student"):
      assert c.stages[stage].optimizer.rms_floor == 1e-5 and c.stages[stage].optimizer.name == "rmsprop"
    assert c.hint.regressor_max_norm == 0.9 and c.hint.reduction == "authors"
