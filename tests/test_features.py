"""Layer listing, capture, regressor sizing, trainable prefixes, and parameter/MAC counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitnets_jax import FitnetsError, features, models
from fitnets_jax.models.maxout import ConvSpec, MaxoutNet, max_pool_ceil, maxout
from fitnets_jax.models.regressor import Regressor
from fitnets_jax.network import network


def layer(name, shape, nonlinearity="maxout", pieces=2):
  return features.Layer(name, (name,), "MaxoutConv", shape, nonlinearity, pieces, 0, 0)


@pytest.mark.parametrize(
  "guided,hint,kernel",
  [
    ((8, 8, 80), (7, 7, 192), (2, 2)),  # CIFAR-10 FitNet 4: conv11 ← teacher conv2
    ((7, 7, 16), (4, 4, 48), (4, 4)),  # MNIST: conv4 ← conv2
    ((4, 4, 6), (4, 4, 64), (1, 1)),  # digits quick start
    ((9, 6, 3), (5, 6, 3), (5, 1)),  # non-square: one k per axis
  ],
)
def test_regressor_kernel_is_ng_minus_nh_plus_one(guided, hint, kernel):
  assert features.regressor_kernel(layer("g", guided), layer("h", hint)) == kernel


def test_regressor_kernel_rejects_a_guided_map_smaller_than_the_hint_map():
  with pytest.raises(FitnetsError, match=r"smaller than the 7×7 map.*hint.teacher_layer='h'"):
    features.regressor_kernel(layer("g", (4, 4, 16)), layer("h", (7, 7, 192)))


def test_regressor_kernel_rejects_dense_layers():
  with pytest.raises(FitnetsError, match="needs two feature maps"):
    features.regressor_kernel(layer("g", (500,)), layer("h", (7, 7, 192)))


def test_regressor_maps_guided_shape_onto_hint_shape_with_the_hint_nonlinearity():
  reg = Regressor(192, (2, 2), "maxout", 2, 0.05)
  variables = reg.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 80)))
  kernel = variables["params"]["conv"]["kernel"]
  assert kernel.shape == (2, 2, 80, 192 * 2)  # k1·k2·O_g·O_h, times the maxout pieces
  assert float(jnp.max(jnp.abs(kernel))) <= 0.05  # U(±0.05)
  out = reg.apply(variables, jnp.ones((3, 8, 8, 80)))
  assert out.shape == (3, 7, 7, 192)
  pre = (
    jax.lax.conv_general_dilated(
      jnp.ones((3, 8, 8, 80)), kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    + variables["params"]["conv"]["bias"]
  )
  np.testing.assert_allclose(out, pre.reshape(3, 7, 7, 192, 2).max(-1), rtol=1e-5)


def test_maxout_takes_the_max_of_consecutive_channel_groups():
  x = jnp.array([[1.0, 5.0, -2.0, -3.0, 0.5, 0.25]])
  np.testing.assert_array_equal(maxout(x, 2), [[5.0, -2.0, 0.5]])
  np.testing.assert_array_equal(maxout(x, 3), [[5.0, 0.5]])


def test_ceil_pooling_covers_the_whole_map():
  # cuda-convnet: out = ceil((33 − 4)/2) + 1 = 16 (floor pooling would give 15).
  assert max_pool_ceil(jnp.zeros((1, 33, 33, 1)), 4, 2).shape == (1, 16, 16, 1)
  x = jnp.arange(25.0).reshape(1, 5, 5, 1)
  np.testing.assert_array_equal(max_pool_ceil(x, 2, 2)[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


@pytest.mark.parametrize("size,stride", [(4, 2), (2, 2), (3, 2), (2, 1), (5, 3)])
def test_the_cpu_forms_of_pooling_and_maxout_equal_the_accelerator_forms(size, stride):
  """On CPU, pooling and maxout are maxima of strided slices (fast gradients); the accelerator forms
  (reduce_window, reshape + max) give the same values and gradients that sum the same."""
  import math

  import flax.linen as nn

  x = jax.random.normal(jax.random.PRNGKey(size * 10 + stride), (2, 21, 17, 8))
  pads = [(0, max(0, (max(1, math.ceil((n - size) / stride) + 1) - 1) * stride + size - n)) for n in x.shape[1:3]]
  pool = lambda v: nn.max_pool(v, (size, size), strides=(stride, stride), padding=pads)
  np.testing.assert_array_equal(max_pool_ceil(x, size, stride), pool(x))
  np.testing.assert_allclose(
    jax.grad(lambda v: max_pool_ceil(v, size, stride).sum())(x), jax.grad(lambda v: pool(v).sum())(x), atol=1e-6
  )  # no ties in random data
  reshaped = lambda v, p: jnp.max(v.reshape(v.shape[:-1] + (v.shape[-1] // p, p)), -1)
  for pieces in (2, 4):
    np.testing.assert_array_equal(maxout(x, pieces), reshaped(x, pieces))
    np.testing.assert_array_equal(
      jax.grad(lambda v: maxout(v, pieces).sum())(x), jax.grad(lambda v: reshaped(v, pieces).sum())(x)
    )


def test_at_a_tie_pooling_sends_each_windows_gradient_to_one_maximum():
  """`first_maximum` gives a tie's whole gradient to its first argument, so that on a constant map every
  pooling window passes its gradient to exactly one element, as `reduce_window`'s select-and-scatter does
  (PyTorch's max pooling too), rather than splitting it."""
  import flax.linen as nn

  from fitnets_jax.models.maxout import first_maximum

  np.testing.assert_array_equal(jax.grad(lambda a, b: first_maximum(a, b), argnums=(0, 1))(2.0, 2.0), (1.0, 0.0))
  np.testing.assert_array_equal(jax.grad(lambda a, b: first_maximum(a, b), argnums=(0, 1))(1.0, 2.0), (0.0, 1.0))
  x = jnp.ones((1, 6, 6, 1))  # 2×2 windows of 4×4, stride 2: they overlap, and every element ties
  grad = jax.grad(lambda v: max_pool_ceil(v, 4, 2).sum())(x)
  reference = jax.grad(lambda v: nn.max_pool(v, (4, 4), strides=(2, 2)).sum())(x)
  np.testing.assert_array_equal(grad, reference)  # each window's 1 to its first element, none split
  assert sorted(zip(*np.nonzero(np.asarray(grad)[0, :, :, 0]))) == [(0, 0), (0, 2), (2, 0), (2, 2)]


def test_an_over_padded_conv_on_cpu_equals_the_padded_convolution():
  """A 5×5 conv padded by 3 (more than 'SAME') is computed on CPU on an input padded beforehand."""
  from fitnets_jax.models.maxout import MaxoutConv

  layer = MaxoutConv(ConvSpec(6, 2, 5, 3))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
  variables = layer.init(jax.random.PRNGKey(1), x)
  kernel, bias = variables["params"]["conv"]["kernel"], variables["params"]["conv"]["bias"]
  pre = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(3, 3)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(layer.apply(variables, x), maxout(pre + bias, 2), rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda v: layer.apply(v, x).sum())(variables)
  assert grad["params"]["conv"]["kernel"].shape == kernel.shape and np.all(
    np.isfinite(grad["params"]["conv"]["kernel"])
  )


def test_macs_and_params_by_hand():
  net = network("toy", MaxoutNet(convs=(ConvSpec(4, 2, 3, 1),), num_classes=10), (8, 8, 1))
  # conv: 8·8 positions × 3·3·1 inputs × 8 outputs; logits: 256 × 10.
  assert net.macs == 64 * 9 * 8 + 256 * 10
  assert net.params == (9 * 8 + 8) + (256 * 10 + 10)
  assert [l.name for l in net.layers] == ["conv1/conv", "conv1", "logits"]
  assert net.layers[1].shape == (8, 8, 4)


@pytest.mark.parametrize(
  "name,paper_macs", [("fitnet1", 30e6), ("fitnet2", 108e6), ("fitnet4", 382e6), ("maxout_cifar_teacher", 725e6)]
)
def test_cifar_models_match_the_papers_multiplications(name, paper_macs):
  net = network(name, models.get_model(name, 10), (32, 32, 3))
  assert abs(net.macs - paper_macs) / paper_macs < 0.015


# The FitNets paper's counts (Tables 1–4): weights only, every maxout layer at 2 pieces (features.paper_params).
# By hand for the two models built from the authors' yamls:
#   fitnet_mnist: 5·5·1·16·2 + 3·3·16·16·2 + 5·5·16·16·2 + 3·3·16·16·2 + 3·3·16·12·2 + 3·3·12·12·2 + 3·3·12·10
#     = 800 + 4,608 + 12,800 + 4,608 + 3,456 + 2,592 + 1,080 = 29,944 (paper: 30K)
#   maxout_svhn_teacher: 5·5·3·64·2 + 5·5·64·128·2 + 5·5·128·128·2 + 6·6·128·400·2 + 400·10
#     = 9,600 + 409,600 + 819,200 + 3,686,400 + 4,000 = 4,928,800 (paper: 4.9M)
@pytest.mark.parametrize(
  "name,shape,paper_params,published",
  [
    ("maxout_cifar_teacher", (32, 32, 3), 9_044_360, 9.0e6),
    ("fitnet1", (32, 32, 3), 249_576, 250e3),
    ("fitnet2", (32, 32, 3), 861_928, 862e3),
    ("fitnet4", (32, 32, 3), 2_544_712, 2.5e6),
    ("maxout_mnist_teacher", (28, 28, 1), 360_816, 361e3),
    ("fitnet_mnist", (28, 28, 1), 29_944, 30e3),
    ("maxout_svhn_teacher", (32, 32, 3), 4_928_800, 4.9e6),
  ],
)
def test_paper_params_reproduce_the_papers_counts(name, shape, paper_params, published):
  net = network(name, models.get_model(name, 10), shape)
  assert net.paper_params == paper_params
  assert abs(paper_params - published) / published < 0.02
  assert net.params > paper_params  # the real count: biases, and every maxout piece
  assert net.describe()["paper_params"] == paper_params


@pytest.mark.parametrize(
  "name,shape,script",
  [
    ("maxout_cifar_teacher", (32, 32, 3), 16_244_360),
    ("fitnet1", (32, 32, 3), 345_576),
    ("fitnet2", (32, 32, 3), 1_053_928),
    ("fitnet4", (32, 32, 3), 2_736_712),
    ("maxout_mnist_teacher", (28, 28, 1), 418_416),
  ],
)
def test_the_authors_count_script_counts_every_piece_and_so_misses_the_published_figures(name, shape, script):
  # computeNumberParams.py multiplies each layer by its own num_pieces: every weight, no bias. That is not
  # the published figure; paper_params (every layer at 2 pieces) is (docs/models.md).
  net = network(name, models.get_model(name, 10), shape)
  kernels = jax.tree_util.tree_leaves_with_path(net.abstract_variables()["params"])
  assert sum(math.prod(k.shape) for path, k in kernels if path[-1].key == "kernel") == script
  assert net.paper_params < script


def test_fitnet3_is_1_50m_by_the_papers_rule_not_1_6m():
  # Table 7's FitNet 3 layout, counted by the paper's rule, gives 1.50M; its Table 1 says 1.6M (see docs/models.md).
  assert network("fitnet3", models.get_model("fitnet3", 10), (32, 32, 3)).paper_params == 1_503_304


def test_the_authors_mnist_fitnet_and_svhn_teacher_layer_shapes():
  # MNIST_fitnet_valid.yaml: 28 → 24 (5×5) → 22 (3×3) → pool 4 s2: ⌈18/2⌉+1 = 10 → 12 (5×5, pad 3) → 10 (3×3)
  # → pool: 4 → 8 (3×3, pad 3) → 6 (3×3) → pool 2 s2: 3; the guided conv4 is 4×4×16 (teacher conv2 4×4×48: a 1×1
  # regressor).
  mnist = network("fitnet_mnist", models.get_model("fitnet_mnist", 10), (28, 28, 1))
  top = {l.name: l for l in mnist.layers if "/" not in l.name}
  assert [top[f"conv{i}"].shape for i in range(1, 7)] == [
    (24, 24, 16),
    (10, 10, 16),
    (12, 12, 16),
    (4, 4, 16),
    (8, 8, 12),
    (3, 3, 12),
  ]
  assert [top[f"conv{i}"].pieces for i in range(1, 7)] == [2, 2, 2, 2, 4, 4]
  # svhn.yaml: 32 + 8 − 4 = 36 → pool 3 s2: 18 → 20 → 10 → 12 → 6; fc 400 (5 pieces)
  svhn = network("maxout_svhn_teacher", models.get_model("maxout_svhn_teacher", 10), (32, 32, 3))
  top = {l.name: l for l in svhn.layers if "/" not in l.name}
  assert [top[n].shape for n in ("conv1", "conv2", "conv3", "fc")] == [(18, 18, 64), (10, 10, 128), (6, 6, 128), (400,)]
  assert top["fc"].pieces == 5


def test_describe_lists_layers_in_execution_order_with_shapes():
  net = network("digits_student", models.get_model("digits_student", 10), (8, 8, 1))
  top = [l for l in net.layers if "/" not in l.name]
  assert [l.name for l in top] == [f"conv{i}" for i in range(1, 11)] + ["fc", "logits"]
  assert top[4].shape == (4, 4, 6) and top[4].nonlinearity == "maxout" and top[4].pieces == 2
  assert top[9].shape == (2, 2, 12) and top[10].shape == (32,) and top[10].pieces == 2


def test_find_layer_error_lists_valid_names():
  net = network("digits_student", models.get_model("digits_student", 10), (8, 8, 1))
  with pytest.raises(FitnetsError, match=r"hint.student_layer='conv99'.*Valid names: conv1/conv.*logits"):
    features.find_layer(net.layers, "conv99", "hint.student_layer", net.name)


def test_unknown_model_lists_known_models():
  with pytest.raises(FitnetsError, match="student.model='vgg17'.*fitnet4.*resnetD or resnetDxW"):
    models.get_model("vgg17", 10, key="student.model")
  with pytest.raises(FitnetsError, match=r"student.model='resnet9000': a CIFAR ResNet needs depth 6n\+2"):
    models.get_model("resnet9000", 10, key="student.model")
  with pytest.raises(FitnetsError, match=r"teacher.model='wrn_15_2': a wide ResNet needs depth 6n\+4"):
    models.get_model("wrn_15_2", 10, key="teacher.model")


def test_capture_returns_the_named_layer_output():
  module = models.get_model("digits_student_bn", 10)
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  logits, feats, _ = features.apply(module, variables, x, False, capture=("conv4", "conv4/conv"))
  assert feats["conv4"].shape == (2, 4, 4, 16) and feats["conv4/conv"].shape == (2, 4, 4, 32)
  np.testing.assert_allclose(logits, module.apply(variables, x), rtol=1e-6)


def test_a_sections_preactivation_is_its_last_blocks_sum_before_the_relu():
  """The `preact` layer of a post-activation block is the sum it takes the ReLU of (RepDistiller's and
  mdistiller's `preact=True` features); a pre-activation ResNet's section already ends linearly."""
  net = network("digits_resnet8", models.get_model("digits_resnet8", 10), (8, 8, 1))
  assert features.preactivation(net.layers, "section2", net.name) == "section2/block1/preact"
  params, stats = net.init(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  names = ("section2", "section2/block1/preact")
  _, feats, _ = features.apply(net.module, {"params": params, "batch_stats": stats}, x, False, capture=names)
  assert (feats["section2/block1/preact"] < 0).any()
  np.testing.assert_array_equal(feats["section2"], jax.nn.relu(feats["section2/block1/preact"]))
  wide = network("wrn_10_1", models.get_model("wrn_10_1", 10), (8, 8, 1))
  assert features.preactivation(wide.layers, "section2", wide.name) == "section2"
  maxout = network("digits_student", models.get_model("digits_student", 10), (8, 8, 1))
  with pytest.raises(
    FitnetsError, match=r"Layer 'conv3' of model 'digits_student' ends in a maxout and has no `preact`"
  ):
    features.preactivation(maxout.layers, "conv3", maxout.name)


def test_prefix_labels_train_up_to_the_guided_layer():
  net = network("digits_student", models.get_model("digits_student", 10), (8, 8, 1))
  params, _ = net.init(jax.random.PRNGKey(0))
  labels = features.prefix_labels(params, features.prefix_paths(net.layers, "conv5"))
  assert {k: set(jax.tree.leaves(v)) for k, v in labels.items()} == {
    **{f"conv{i}": {"train"} for i in range(1, 6)},
    **{f"conv{i}": {"freeze"} for i in range(6, 11)},
    "fc": {"freeze"},
    "logits": {"freeze"},
  }


def test_layers_report_shows_both_tables_and_the_hint_pair():
  from fitnets_jax.tools import layers

  from conftest import load_config, with_overrides

  text = layers.report(load_config("cifar10"))
  assert "teacher: maxout_cifar_teacher — 16,247,830 params" in text
  assert "student: fitnet4" in text and "conv11       MaxoutConv   8×8×80" in text
  assert text.endswith(
    "student conv11 (8, 8, 80) → regressor 2×2 conv, maxout (2 pieces), 123,264 params → teacher conv2 (7, 7, 192)"
  )
  text = layers.report(load_config("at_digits"))
  assert "sections (input → output): stem → section1, section1 → section2, section2 → section3" in text
  assert text.endswith("hints[2]: attention, student section3 (2, 2, 32) → teacher section3 (2, 2, 32)")
  text = layers.report(load_config("dml_digits"))
  assert "net1: digits_student — 18,010 params" in text and "net2: digits_resnet8 — 19,810 params" in text
  text = layers.report(load_config("byot_digits"))
  assert (
    "student: digits_resnet18" in text and "exit3: exit head after section3" in text and "sepconv1/depthwise1" in text
  )
  assert "attention/depthwise1" in text  # the authors' code's attention masks, the default
  plain = layers.report(with_overrides(load_config("byot_digits"), {"byot.attention": False}))
  assert "exit3: exit head after section3" in plain and "attention/" not in plain
  # multi_teacher lists the hint pairs its hint stage trains (each method's record says whether it reads them).
  text = layers.report(with_overrides(load_config("multi_teacher_digits"), {"multi_teacher.hint_stage": True}))
  assert "hint: student conv5 (4, 4, 6) → regressor" in text and "→ teacher1 conv2 (4, 4, 64)" in text
  assert "hint:" not in layers.report(load_config("multi_teacher_digits"))
  # A multi-level method's record names the levels it reads, pre-activations included.
  assert layers.report(load_config("ofd_digits")).endswith(
    "ofd levels (student → teacher): section1/block1/preact → section1/block3/preact, "
    "section2/block1/preact → section2/block3/preact, section3/block1/preact → section3/block3/preact"
  )
  assert "reviewkd levels (student → teacher): section1 → section1/block3/preact" in layers.report(
    load_config("reviewkd_digits")
  )


@pytest.mark.parametrize(
  "name,params",
  [
    # He et al. 2016 Table 6 (option A shortcuts; option B's 1×1 projections add < 1 %), Zagoruyko &
    # Komodakis 2016 Table 1, and CRD's resnet8x4 / resnet32x4.
    ("resnet20", 0.27e6),
    ("resnet56", 0.85e6),
    ("resnet110", 1.7e6),
    ("wrn_16_4", 2.7e6),
    ("wrn_40_4", 8.9e6),
    ("wrn_16_8", 11.0e6),
    ("resnet8x4", 1.23e6),
    ("resnet32x4", 7.43e6),
  ],
)
def test_resnet_parameter_counts_match_the_papers(name, params):
  net = network(name, models.get_model(name, 10), (32, 32, 3))
  assert abs(net.params - params) / params < 0.025
  assert net.sections == (("stem", "section1"), ("section1", "section2"), ("section2", "section3"))
  shapes = {l.name: l.shape for l in net.layers}
  assert shapes["section1"][:2] == (32, 32) and shapes["section2"][:2] == (16, 16) and shapes["section3"][:2] == (8, 8)


@pytest.mark.parametrize("name,params", [("resnet18", 11_173_962), ("resnet34", 21_282_122)])
def test_four_section_resnets_match_the_usual_cifar_counts(name, params):
  """He et al.'s ResNet-18/34 with a 3×3 stem and no max-pool, as CIFAR code bases build them."""
  net = network(name, models.get_model(name, 10), (32, 32, 3))
  assert net.params == params
  assert [b for _, b in net.sections] == ["section1", "section2", "section3", "section4"]
  shapes = {l.name: l.shape for l in net.layers}
  assert [shapes[f"section{i}"] for i in range(1, 5)] == [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)]


# One model per kind of initialiser the configs use: flax's default truncated normal with batch norm
# (digits_teacher), He-style variance scaling (digits_resnet8) and the papers' uniform range
# (fitnet_mnist). `Network.init` compiles the initialisers as one program at LLVM level 1
# (fitnets_jax.compiler.RUN_ONCE_OPTIONS); before that, runs called `module.init` outside jit. Both run
# threefry's integer bits through the same elementwise float maps, with no reduction to reassociate,
# so they agree bit for bit on any x86-64 CPU; a difference here would change every run's numbers.
INIT_MODELS = [("digits_teacher", (8, 8, 1)), ("digits_resnet8", (8, 8, 1)), ("fitnet_mnist", (28, 28, 1))]


@pytest.mark.parametrize("name,shape", INIT_MODELS, ids=[name for name, _ in INIT_MODELS])
def test_compiled_initialisation_equals_op_by_op_initialisation_bit_for_bit(name, shape):
  net = network(name, models.get_model(name, 10, dropout=0.0), shape)
  rng = jax.random.PRNGKey(3)
  params, batch_stats = net.init(rng)
  eager = net.module.init({"params": rng, "dropout": rng}, jnp.zeros((1,) + shape), train=False)
  expected = (eager["params"], eager.get("batch_stats", {}))
  assert jax.tree.structure((params, batch_stats)) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves((params, batch_stats)), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
