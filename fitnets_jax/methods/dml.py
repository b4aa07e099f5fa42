"""`dml`: Deep Mutual Learning (Zhang et al., CVPR 2018) — K ≥ 2 networks learn from each other.

No pretrained teacher: the cohort (`config.cohort`, architectures may differ) trains together
from scratch. Network k minimises L_k = H(y, p_k) + Σ_{l≠k} KL(p_l^τ ‖ p_k^τ) as the authors'
TensorFlow code adds its peers' terms (`dml.peers='sum'`), or with the sum divided by K−1 as the
paper's eq. 10 (`dml.peers='mean'`); the two agree for K = 2 (`losses.mutual_learning_loss`). The
peers' predictions are targets for this update only.

Update order `alternating` (the paper's Algorithm 1): update network 1, recompute its
predictions, update network 2 against them, and so on, all inside one jitted step.
`simultaneous`: every network against its peers' predictions from before the step. Each
network has its own optimizer state and learning-rate schedule (`stages.student.optimizer`,
with the entry's `optimizer` overrides), and its own dropout stream.

Evaluation: each network's accuracy, the cohort's ensemble (mean of probabilities), and the
agreement (the fraction of test images two networks label alike, averaged over pairs).
"""

import itertools

import ml_collections

from fitnets_jax.errors import check, one_of
from fitnets_jax.methods.registry import Method
from fitnets_jax.methods.shared import Stage, Update, network_entry

ORDERS = ("alternating", "simultaneous")
COHORT_KEYS = ("model", "dropout", "optimizer")


def defaults():
  return {
    # The cohort: a list of K ≥ 2 dicts {model, dropout, optimizer}; each network trains for
    # stages.student's length with its own optimizer (stages.student.optimizer with `optimizer` overrides).
    "cohort": [],
    "dml": ml_collections.ConfigDict(
      dict(
        temperature=1.0,  # τ of the peers' KL terms (the paper: 1)
        order="alternating",  # alternating: update net 1, recompute, update net 2, … | simultaneous
        peers="sum",  # K > 2: sum the K−1 KL terms (the authors' code) | mean (the paper's eq. 10)
      )
    ),
  }


def cohort(config):
  """[(name, config key, {model, dropout}, stage config)] of the cohort's networks net1…netK."""
  entries = list(config.cohort)
  check(
    len(entries) >= 2,
    f"method='dml' trains a cohort of K ≥ 2 networks, but config.cohort lists {len(entries)}; give at least "
    f"two dicts with keys {', '.join(COHORT_KEYS)} (model required), e.g. "
    "[{'model': 'resnet32'}, {'model': 'resnet32'}].",
  )
  specs = []
  for i, entry in enumerate(entries):
    entry, stage = network_entry(entry, f"cohort[{i}]", COHORT_KEYS, config.stages.student)
    net_cfg = ml_collections.ConfigDict(dict(model=entry["model"], dropout=float(entry.get("dropout", 0.0))))
    specs.append((f"net{i + 1}", f"cohort[{i}]", net_cfg, stage))
  return specs


def networks(config):
  """The networks this method trains, for set-up and the layers report; net1 is the summary's student."""
  return [(name, key, net_cfg) for name, key, net_cfg, _ in cohort(config)]


def dml_stage(ctx):
  import jax
  import jax.numpy as jnp
  import optax

  from fitnets_jax import losses, optim
  from fitnets_jax.network import build_network, forward, predict, variables

  cfg = ctx.config.dml
  one_of("dml.order", cfg.order, ORDERS)
  one_of("dml.peers", cfg.peers, losses.PEER_REDUCTIONS)
  check(cfg.temperature > 0, f"dml.temperature={cfg.temperature!r} must be > 0.")
  specs = cohort(ctx.config)
  names = [name for name, *_ in specs]
  build = lambda key, net_cfg: build_network(key, net_cfg, ctx.num_classes, ctx.student.input_shape, ctx.student.dtype)
  nets = {name: ctx.student if i == 0 else build(key, net_cfg) for i, (name, key, net_cfg, _) in enumerate(specs)}
  num_steps = ctx.steps("student")
  txs = {
    name: optim.optimizer(stage.optimizer, num_steps, ctx.steps_per_epoch, f"{key}.optimizer")
    for name, key, _, stage in specs
  }
  alternating = cfg.order == "alternating"

  def init(rng, carry):
    fresh = {name: nets[name].init(jax.random.fold_in(rng, i)) for i, name in enumerate(names)}
    return {n: p for n, (p, _) in fresh.items()}, {n: s for n, (_, s) in fresh.items()}

  def apply(name, params, batch_stats, x, rng):
    return forward(nets[name], params, batch_stats, x, True, jax.random.fold_in(rng, names.index(name)))

  def update(params, batch_stats, opt_state, teaching, batch, rng, step):
    x, y = batch["image"], batch["label"]
    params, batch_stats, opt_state = dict(params), dict(batch_stats), dict(opt_state)
    # Network 1's targets: its peers' predictions before the step.
    targets = {name: apply(name, params[name], batch_stats[name], x, rng)[0] for name in names[1:]}
    scalars, grads, total = {}, {}, 0.0
    for name in names:
      peers = [targets[other] for other in names if other != name]

      def loss_fn(p, name=name, peers=peers):
        logits, _, stats = apply(name, p, batch_stats[name], x, rng)
        loss, parts = losses.mutual_learning_loss(logits, peers, y, cfg.temperature, cfg.peers)
        return loss, (parts, stats, logits)

      (loss, (parts, stats, logits)), grads[name] = jax.value_and_grad(loss_fn, has_aux=True)(params[name])
      updates, opt_state[name] = txs[name].update(grads[name], opt_state[name], params[name])
      params[name], batch_stats[name] = optax.apply_updates(params[name], updates), stats
      if alternating and name != names[-1]:  # the next networks learn from the updated predictions
        logits = apply(name, params[name], batch_stats[name], x, rng)[0]
      targets[name] = logits
      total = total + loss
      scalars.update({f"{name}_{k}": v for k, v in parts.items()})
      scalars[f"{name}_accuracy"] = losses.accuracy(logits, y)
    scalars["accuracy"] = scalars[f"{names[0]}_accuracy"]
    return Update(params, batch_stats, opt_state, total, scalars, grads)

  def evaluation(state_vars, images, labels):
    logits = [predict(nets[n], variables(state_vars["params"][n], state_vars["batch_stats"][n]), images) for n in names]
    predictions = [jnp.argmax(z, -1) for z in logits]
    values = {f"{n}_accuracy": p == labels for n, p in zip(names, predictions)}
    ensemble = jnp.mean(jnp.stack([jax.nn.softmax(z.astype(jnp.float32)) for z in logits]), axis=0)
    pairs = list(itertools.combinations(predictions, 2))
    return {
      "accuracy": values[f"{names[0]}_accuracy"],
      **values,
      "ensemble_accuracy": jnp.argmax(ensemble, -1) == labels,
      "agreement": sum((a == b).astype(jnp.float32) for a, b in pairs) / len(pairs),
    }

  def summarize(test):
    return {
      "cohort": [{"role": n, **nets[n].describe(), "test_accuracy": test.get(f"{n}_accuracy")} for n in names],
      "ensemble_accuracy": test.get("ensemble_accuracy"),
      "agreement": test.get("agreement"),
    }

  return Stage(
    name="dml",
    trains=names[0],
    num_steps=num_steps,
    tx=optim.per_network(txs),
    init=init,
    update=update,
    evaluation=evaluation,
    summarize=summarize,
    networks=nets,
  )


METHOD = Method(name="dml", stages=lambda ctx: [dml_stage(ctx)], networks=networks, defaults=defaults)
