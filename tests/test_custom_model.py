"""A model of your own, named 'package.module:factory': defined here, it trains with `fitnets` (hint onto
its own layer names) and with `fsp` (sections declared in the config), and is saved and reloaded."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitnets_jax
from fitnets_jax import FitnetsError, data, experiment
from fitnets_jax.tools import layers

from conftest import tiny_digits

NAME = "test_custom_model:tiny_cnn"  # this module is importable: pytest puts tests/ on sys.path


class TinyCNN(nn.Module):
  """8×8 digits: a stem and three conv blocks of 8/16/32 channels (the last two with stride 2), the
  channels of the digits ResNets' sections, so FSP matrices pair up with digits_resnet8's."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
    x = nn.relu(nn.Conv(8, (3, 3), name="block1")(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2, name="block2")(x))
    x = nn.relu(nn.Conv(32, (3, 3), strides=2, name="block3")(x))
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def tiny_cnn(num_classes):
  return TinyCNN(num_classes)


SECTIONS = [["stem", "block1"], ["block1", "block2"], ["block2", "block3"]]


class DropoutCNN(nn.Module):
  """flax's own convention: `deterministic=` rather than `train=`."""

  num_classes: int

  @nn.compact
  def __call__(self, x, deterministic=True):
    x = nn.Dropout(0.5, deterministic=deterministic)(nn.relu(nn.Conv(8, (3, 3), name="stem")(x)))
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class NoFlag(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape(len(x), -1))


def dropout_cnn(num_classes):
  return DropoutCNN(num_classes)


def no_flag(num_classes):
  return NoFlag(num_classes)


def test_a_model_taking_deterministic_is_called_with_train_flipped_and_one_taking_neither_is_refused():
  from fitnets_jax.network import forward

  config = tiny_digits(**{"student.model": "test_custom_model:dropout_cnn"})
  net = experiment.build_network("student", config.student, 10, (8, 8, 1))
  params, stats = net.init(jax.random.PRNGKey(0))
  assert set(params) == {"stem", "head"}  # the same parameters as the module's own
  x = jnp.ones((4, 8, 8, 1))
  evaluation = [forward(net, params, stats, x, False)[0] for _ in range(2)]
  training = [forward(net, params, stats, x, True, jax.random.PRNGKey(seed))[0] for seed in (1, 2)]
  np.testing.assert_array_equal(*evaluation)  # train=False: deterministic, no dropout
  assert not np.allclose(*training)  # train=True: dropout drawn from the rng
  with pytest.raises(FitnetsError, match=r"student.model='test_custom_model:no_flag': NoFlag.__call__.*takes neither"):
    experiment.build_network(
      "student", tiny_digits(**{"student.model": "test_custom_model:no_flag"}).student, 10, (8, 8, 1)
    )


def test_the_layer_report_sees_its_layers_and_counts(tmp_path):
  config = tiny_digits("fitnets", **{"student.model": NAME, "hint.student_layer": "block2"})
  text = layers.report(config)
  assert f"student: {NAME} — " in text and "block2" in text and "stem" in text
  net = experiment.build_network("student", config.student, 10, (8, 8, 1))
  # MACs by hand: 8×8 outputs for stem (9·1·8) and block1 (9·8·8), 4×4 for block2 (9·8·16), 2×2 for block3
  # (9·16·32), the head 32·10.
  assert net.macs == 64 * 72 + 64 * 576 + 16 * 1152 + 4 * 4608 + 320
  assert net.params == (9 * 1 + 1) * 8 + (9 * 8 + 1) * 8 + (9 * 8 + 1) * 16 + (9 * 16 + 1) * 32 + 33 * 10


def test_fitnets_hints_onto_a_layer_of_your_own_model(tmp_path):
  work = str(tmp_path / "fitnets")
  config = tiny_digits("fitnets", num_devices=1, **{"student.model": NAME, "hint.student_layer": "block2"})
  summary = fitnets_jax.run(config, work)
  assert summary["student"]["model"] == NAME and list(summary["stages"]) == ["teacher", "hint", "kd"]
  assert np.isfinite(summary["stages"]["hint"]["final_train_loss"])
  _, _, images, labels = data.digits_arrays()
  model = fitnets_jax.load_model(work)  # rebuilt from its factory
  assert model.predict(images[:0]).shape == (0, 10)  # an empty batch is an empty answer
  assert np.mean(model.predict(images).argmax(-1) == labels) == pytest.approx(
    summary["student"]["test_accuracy"], abs=1 / 360
  )


def test_fsp_with_sections_declared_in_the_config(tmp_path):
  overrides = {"student.model": NAME, "student.sections": SECTIONS, "teacher.model": "digits_resnet8"}
  summary = fitnets_jax.run(tiny_digits("fsp", num_devices=1, **overrides), str(tmp_path / "fsp"))
  assert list(summary["stages"]) == ["teacher", "fsp", "ce"] and np.isfinite(
    summary["stages"]["fsp"]["final_train_loss"]
  )


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"student.model": "no_such_module:f"}, r"student.model='no_such_module:f': ModuleNotFoundError"),
    ({"student.model": "test_custom_model:missing"}, r"AttributeError: .*'missing'"),
    ({"student.model": "test_custom_model:SECTIONS"}, r"SECTIONS\(num_classes=10\) failed \(TypeError"),
    ({"student.model": NAME, "student.sections": [["stem", "block9"]]}, r"student.sections=\[\['stem', 'block9'\]\]"),
  ],
)
def test_a_bad_model_of_your_own_is_one_paragraph(overrides, message, tmp_path):
  with pytest.raises(FitnetsError, match=message):
    experiment.prepare(tiny_digits("fsp", **overrides), str(tmp_path / "bad"))
