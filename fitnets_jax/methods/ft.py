"""`ft`: factor transfer (Kim et al., NeurIPS 2018), two stages: the paraphraser, then the student.

Stage `paraphraser` (configured by `stages.hint`): a convolutional auto-encoder on the teacher's last
feature map learns its "factors" — encoder conv3×3 (C → C → C·k → C·k), decoder transposed conv3×3
(C·k → C·k → C → C), LeakyReLU(0.1) after each, k = 0.5 — by the mean squared reconstruction error;
the teacher is frozen and the student is not computed. Stage `ft` (`stages.student`): the student
trains with a translator (the same encoder on its own map, each conv followed by batch norm) beside it
on H(y, P_S) + β·|F_T − F_S|, the frozen paraphraser's encoder giving F_T. The FT authors released no
code; this follows RepDistiller (`FT.py`, `Paraphraser`, `Translator`, `helper/pretrain.py`): the
factor of a map is its mean over channels of the squared values, flattened and L2-normalised
(`F.normalize`, ε 1e-12), the loss the mean absolute difference (p1 = 2, p2 = 1), β = 200
(`-b 200`), the paraphraser trained 30 epochs by MSE (`--init_epochs 30`, SGD 0.01 for ResNet and WRN
students), torch's default initialisation, biases on every convolution. `ft.form='paper'` takes
eq. 3–4 instead: the factor is the whole encoder output flattened and L2-normalised, the loss its L1
distance Σ|·| per example, averaged over the batch. The translator's batch norm normalises by the
batch's statistics (the only ones it is ever used with: it is left behind after training).
Layers: `ft.student_layer`, `ft.teacher_layer` ("": the layer each classifier reads, RepDistiller's
`feat[-2]`); both must be maps of the same size (RepDistiller pools neither).
"""

import ml_collections

from fitnets_jax.errors import check, one_of
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

FORMS = ("repdistiller", "paper")
SLOPE = 0.1  # LeakyReLU's negative slope
NORMALIZE_EPS = 1e-12  # F.normalize


def defaults():
  return {
    "ft": ml_collections.ConfigDict(
      dict(
        weight=200.0,  # β (RepDistiller -b 200)
        rate=0.5,  # k: the factor's channels per teacher channel (RepDistiller, the paper's CIFAR k)
        form="repdistiller",  # repdistiller: mean_c F² normalised, mean |Δ| | paper: eq. 3–4
        student_layer="",  # "": the layer the classifier reads
        teacher_layer="",
      )
    )
  }


def conv_init(rng, k_in, k_out, fan_in):
  """A 3×3 convolution's HWIO kernel and bias, torch's default U(±1/√fan_in)."""
  import jax

  kk, kb = jax.random.split(rng)
  init = shared.torch_uniform(fan_in)
  return {"kernel": init(kk, (3, 3, k_in, k_out)), "bias": init(kb, (k_out,))}


def conv(x, p):
  """3×3, stride 1, padding 1 (a stride-1 transposed convolution with padding 1 is one too, its kernel
  flipped: the same family of functions, trained from the same initialisation's distribution)."""
  import jax

  y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + p["bias"]


def leaky_relu(x):
  import jax

  return jax.nn.leaky_relu(x, SLOPE)


def paraphraser_init(rng, channels, rate):
  """RepDistiller's Paraphraser(use_bn=False): encoder conv1…3, decoder deconv1…3."""
  import jax

  factor = int(channels * rate)
  keys = jax.random.split(rng, 6)
  widths = [(channels, channels), (channels, factor), (factor, factor)]
  encoder = {f"conv{i + 1}": conv_init(keys[i], a, b, a * 9) for i, (a, b) in enumerate(widths)}
  # ConvTranspose2d's weight is (in, out, 3, 3): torch takes its fan-in from dimension 1, the outputs.
  decoder = {
    f"deconv{i + 1}": conv_init(keys[3 + i], a, b, b * 9)
    for i, (a, b) in enumerate([(factor, factor), (factor, channels), (channels, channels)])
  }
  return {**encoder, **decoder}


def translator_init(rng, student_channels, teacher_channels, rate):
  """RepDistiller's Translator(use_bn=True): conv1…3, each with its batch norm's scale 1 and bias 0."""
  import jax

  factor = int(teacher_channels * rate)
  keys = jax.random.split(rng, 3)
  widths = [(student_channels, student_channels), (student_channels, factor), (factor, factor)]
  params = {}
  for i, (k, (a, b)) in enumerate(zip(keys, widths)):
    params[f"conv{i + 1}"] = conv_init(k, a, b, a * 9)
    params[f"bn{i + 1}"] = shared.batch_norm_params(b)
  return params


def encode(x, params, norm=False):
  """The three encoder convolutions with LeakyReLU (and batch norm before it: the translator)."""
  for i in (1, 2, 3):
    x = conv(x, params[f"conv{i}"])
    x = leaky_relu(shared.batch_norm_train(x, params[f"bn{i}"]) if norm else x)
  return x


def reconstruct(x, params):
  """The paraphraser's decoder on its encoder's factors."""
  x = encode(x, params)
  for i in (1, 2, 3):
    x = leaky_relu(conv(x, params[f"deconv{i}"]))
  return x


def factor_loss(student_factor, teacher_factor, form="repdistiller"):
  """RepDistiller's factor loss (p1 = 2, p2 = 1) or the paper's eq. 3–4 (`form='paper'`), in float32."""
  import jax
  import jax.numpy as jnp

  def factor(f):
    f = f.astype(jnp.float32)
    f = jnp.mean(jnp.square(f), axis=-1) if form == "repdistiller" else f
    f = f.reshape(len(f), -1)
    return f / shared.safe_norm(f, axis=1, floor=NORMALIZE_EPS)

  diff = jnp.abs(factor(student_factor) - factor(jax.lax.stop_gradient(teacher_factor)))
  return jnp.mean(diff) if form == "repdistiller" else jnp.mean(jnp.sum(diff, axis=1))


def layers_of(ctx, cfg):
  layers = {}
  for role, net, key in (("student", ctx.student, "student_layer"), ("teacher", ctx.teacher, "teacher_layer")):
    name = cfg[key] or shared.classifier_input(net)
    layer = next((l for l in net.layers if l.name == name), None)
    found = "its layers are listed by `python -m fitnets_jax.tools.layers`"
    if layer is not None:
      found = f"{name!r} gives {layer.shape}"
    check(
      layer is not None and len(layer.shape) == 3,
      f"ft.{key}={cfg[key]!r}: factor transfer needs a feature map (H, W, C) of {role}.model={net.name!r}; {found}.",
    )
    layers[role] = layer
  check(
    layers["student"].shape[:2] == layers["teacher"].shape[:2],
    f"ft: the student's {layers['student'].name!r} ({layers['student'].shape[0]}×{layers['student'].shape[1]}) and "
    f"the teacher's {layers['teacher'].name!r} ({layers['teacher'].shape[0]}×{layers['teacher'].shape[1]}) must have "
    "the same size; pick layers at the same resolution (ft.student_layer, ft.teacher_layer).",
  )
  return layers


def paraphraser_stage(ctx, cfg, layers):
  import jax.numpy as jnp

  from fitnets_jax import teachers

  teacher_layer = layers["teacher"].name
  channels = layers["teacher"].shape[-1]
  num_steps = ctx.steps("hint")

  def init(rng, carry):
    return {"paraphraser": paraphraser_init(rng, channels, cfg.rate)}, {"paraphraser": {}}

  def loss(params, batch_stats, teaching, batch, rng, step):
    target = teachers.features(ctx, teaching, batch, {"teacher": (teacher_layer,)})["teacher"][teacher_layer]
    target = target.astype(jnp.float32)
    error = jnp.mean(jnp.square(reconstruct(target, params["paraphraser"]) - target))
    return error, ({"reconstruction": error}, {"paraphraser": {}})

  return shared.Stage(
    name="paraphraser",
    trains="paraphraser",
    num_steps=num_steps,
    tx=ctx.optimizer("hint", num_steps),
    init=init,
    loss=loss,
    uses_teacher=True,
    evaluate=False,
    learning_rate=ctx.learning_rate("hint", num_steps),
    teacher_layers={"teacher": (teacher_layer,)},
  )


def ft_stage(ctx, cfg, layers):
  import jax

  s_layer, t_layer = layers["student"], layers["teacher"]

  def init(rng, carry):
    params, stats = ctx.student.init(rng)
    translator = translator_init(jax.random.fold_in(rng, 1), s_layer.shape[-1], t_layer.shape[-1], cfg.rate)
    # The carry is the paraphraser stage's output; without one (the trainer's shape and restore targets)
    # a fresh paraphraser of the same shapes stands in.
    paraphraser = carry[0] if carry is not None else paraphraser_init(rng, t_layer.shape[-1], cfg.rate)
    return {"student": params, "distiller": {"translator": translator, "paraphraser": paraphraser}}, {"student": stats}

  def labels(params):
    frozen = {"paraphraser"}
    return {
      role: {k: jax.tree.map(lambda _: "freeze" if k in frozen else "train", v) for k, v in tree.items()}
      if role == "distiller"
      else jax.tree.map(lambda _: "train", tree)
      for role, tree in params.items()
    }

  def term(s_feats, t_feats, params):
    student_factor = encode(s_feats[s_layer.name].astype(jax.numpy.float32), params["translator"], norm=True)
    teacher_factor = encode(t_feats["teacher"][t_layer.name].astype(jax.numpy.float32), params["paraphraser"])
    return factor_loss(student_factor, teacher_factor, cfg.form)

  captures = ((s_layer.name,), {"teacher": (t_layer.name,)})
  return shared.distiller_stage(ctx, "ft", cfg, captures, term, init=init, labels=labels)


def stages(ctx):
  cfg = ctx.config.ft
  one_of("ft.form", cfg.form, FORMS)
  check(0 < cfg.rate <= 1, f"ft.rate={cfg.rate!r} must be in (0, 1]: the factor's share of the teacher's channels.")
  layers = layers_of(ctx, cfg)
  check(
    int(layers["teacher"].shape[-1] * cfg.rate) > 0,
    f"ft.rate={cfg.rate!r} leaves no factor channel of the teacher's {layers['teacher'].shape[-1]}.",
  )
  return [paraphraser_stage(ctx, cfg, layers), ft_stage(ctx, cfg, layers)]


METHOD = Method(name="ft", stages=stages, teachers="one", defaults=defaults, first_stages=("paraphraser",))
