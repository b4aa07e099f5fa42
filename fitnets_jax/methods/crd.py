"""`crd`: contrastive representation distillation (Tian et al., ICLR 2020), one stage beside the labels.

Both networks' pooled embeddings pass through a trained linear layer and are L2-normalised (128 wide).
Each example is contrasted against K negatives held in two memory banks, one row per training example:
the student's embedding against the teacher-side bank and the teacher's against the student-side bank,
scores exp(⟨e, m⟩/τ)/Z, and the NCE loss of eq. 18 with noise P_n = 1/N on both (K = 16384, τ = 0.07).
After the step each bank's rows of the batch's examples move towards the new embeddings with momentum
0.5 and are renormalised. As the authors' code (RepDistiller's `crd/` — CRD's own repository — and
`distiller_zoo`): banks start U(±1/√(d/3)); Z is fixed at the first step to mean(score)·N, once per
side; the negatives are the example's own id followed by K ids of other classes drawn uniformly, without
replacement where the class leaves at least K (`CIFAR100InstanceSample`, mode 'exact'), with
replacement where it does not; ε = 1e-7 in the NCE ratios; weight 0.8 (`-b 0.8`).

The banks and the two Z are part of the train state (the stage's `batch_stats`, under "distiller"):
checkpointed with it and resumed bit for bit. Every device holds both banks whole (replicated) and the
step gathers and scatters the global batch's rows, so the numbers do not depend on the device or host
count. Drawing without replacement ranks N random keys per example (b·N numbers a step: 3.2 M for
CIFAR-100 at batch 64).
"""

import ml_collections

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

EPS = 1e-7  # the NCE ratios' ε (RepDistiller crd/criterion.py)
NORMALIZE_EPS = 1e-12  # the embeddings' norm floor: a gradient 0 where torch's is NaN


def defaults():
  return {
    "crd": ml_collections.ConfigDict(
      dict(
        weight=0.8,  # β (RepDistiller -b 0.8)
        embedding=128,  # the embeddings' and banks' width (--feat_dim)
        negatives=16384,  # K (--nce_k)
        temperature=0.07,  # τ (--nce_t)
        momentum=0.5,  # the banks' momentum (--nce_m)
        student_layer="",  # "": the layer the classifier reads, averaged over its positions
        teacher_layer="",
      )
    )
  }


def nce_loss(scores, num_data):
  """Eq. 18 with P_n = 1/N: −(Σ log D1(positive) + Σ log D0(negatives)) / b; `scores` (b, K+1), the
  positive first."""
  import jax.numpy as jnp

  k = scores.shape[1] - 1
  noise = k / num_data
  log_d1 = jnp.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
  log_d0 = jnp.log(noise / (scores[:, 1:] + noise + EPS))
  return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / scores.shape[0]


def contrast(e_student, e_teacher, index, contrast_ids, memory, temperature, momentum):
  """(the CRD loss, the updated memory): `memory` {"student", "teacher": (N, d) banks, "z": [Z_s, Z_t],
  negative until set}; `contrast_ids` (b, K+1) with each example's own id first."""
  import jax
  import jax.numpy as jnp

  num_data = memory["student"].shape[0]
  rows_s, rows_t = memory["student"][contrast_ids], memory["teacher"][contrast_ids]  # (b, K+1, d)
  score_s = jnp.exp(jnp.einsum("bkd,bd->bk", rows_t, e_student) / temperature)  # student vs teacher bank
  score_t = jnp.exp(jnp.einsum("bkd,bd->bk", rows_s, e_teacher) / temperature)
  first = jax.lax.stop_gradient(jnp.stack([jnp.mean(score_s), jnp.mean(score_t)]) * num_data)
  z = jnp.where(memory["z"] < 0, first, memory["z"])
  value = nce_loss(score_s / z[0], num_data) + nce_loss(score_t / z[1], num_data)

  def moved(bank, e):
    row = bank[index] * momentum + jax.lax.stop_gradient(e) * (1.0 - momentum)
    return bank.at[index].set(row / jnp.sqrt(jnp.sum(row * row, axis=1, keepdims=True)))

  return value, {"student": moved(memory["student"], e_student), "teacher": moved(memory["teacher"], e_teacher), "z": z}


def class_table(labels_by_id, num_classes):
  """(ids sorted by class, each class's first position there, each class's size) as numpy arrays."""
  import numpy as np

  order = np.argsort(labels_by_id, kind="stable").astype(np.int32)
  count = np.bincount(labels_by_id, minlength=num_classes).astype(np.int32)
  start = (np.cumsum(count) - count).astype(np.int32)
  return order, start, count


def sample_contrast(rng, index, label, labels_by_id, table, k):
  """(b, K+1) ids: each example's own, then K ids of other classes drawn uniformly; without replacement
  for an example whose class leaves at least K others (the K smallest of random keys), with replacement
  otherwise (RepDistiller: np.random.choice(cls_negative[target], K, replace=K > len(…)))."""
  import jax
  import jax.numpy as jnp

  order, start, count = (jnp.asarray(a) for a in table)
  n = labels_by_id.shape[0]
  pool = n - count[label]
  k_with, k_without = jax.random.split(rng)
  r = jax.random.randint(k_with, (len(index), k), 0, pool[:, None])
  # The other classes' ids are `order` without the example's own class's block.
  chosen = order[jnp.where(r < start[label][:, None], r, r + count[label][:, None])]
  if k <= n - int(table[2].min()):  # some class leaves at least K: draw those without replacement
    keys = jax.random.uniform(k_without, (len(index), n))
    keys = jnp.where(jnp.asarray(labels_by_id)[None, :] == label[:, None], 2.0, keys)  # own class: last
    _, without = jax.lax.top_k(-keys, k)
    chosen = jnp.where((pool >= k)[:, None], without.astype(chosen.dtype), chosen)
  return jnp.concatenate([index[:, None].astype(chosen.dtype), chosen], axis=1)


def embed(f, p):
  """RepDistiller's Embed: flatten, linear, L2-normalise."""
  import jax.numpy as jnp

  e = f.reshape(len(f), -1).astype(jnp.float32) @ p["kernel"] + p["bias"]
  return e / shared.safe_norm(e, axis=1, floor=NORMALIZE_EPS)


def crd_stage(ctx):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from fitnets_jax import losses, teachers
  from fitnets_jax.network import forward

  cfg = ctx.config.crd
  check(cfg.weight >= 0, f"crd.weight={cfg.weight!r} must be ≥ 0.")
  check(
    isinstance(cfg.embedding, int) and cfg.embedding > 0, f"crd.embedding={cfg.embedding!r} must be an integer > 0."
  )
  check(
    isinstance(cfg.negatives, int) and cfg.negatives > 0, f"crd.negatives={cfg.negatives!r} must be an integer > 0."
  )
  check(cfg.temperature > 0, f"crd.temperature={cfg.temperature!r} must be > 0.")
  check(0 <= cfg.momentum < 1, f"crd.momentum={cfg.momentum!r} must be in [0, 1).")
  labels_by_id = ctx.train_labels()
  check(
    len(np.unique(labels_by_id)) > 1,
    "crd draws its negatives from the other classes' examples, but the training set has one class.",
  )
  table = class_table(labels_by_id, max(ctx.num_classes, int(labels_by_id.max()) + 1))
  num_data, width = len(labels_by_id), cfg.embedding
  student, teacher = ctx.student, ctx.teacher
  layers = {
    role: cfg[key] or shared.classifier_input(net)
    for role, net, key in (("student", student, "student_layer"), ("teacher", teacher, "teacher_layer"))
  }
  for role, net, key in (("student", student, "student_layer"), ("teacher", teacher, "teacher_layer")):
    check(
      layers[role] in [l.name for l in net.layers],
      f"crd.{key}={cfg[key]!r} is not a layer of {role}.model={net.name!r} (`python -m fitnets_jax.tools.layers` "
      "lists them), or '' for the layer its classifier reads.",
    )
  channels = {
    role: next(l.shape for l in net.layers if l.name == layers[role])[-1]
    for role, net in (("student", student), ("teacher", teacher))
  }
  pooled = lambda f: jnp.mean(f, axis=tuple(range(1, f.ndim - 1))) if f.ndim > 2 else f

  def init(rng, carry):
    params, stats = shared.fresh_or_carried(student, rng, carry)
    k = jax.random.split(jax.random.fold_in(rng, 1), 4)
    heads = {
      "embed_student": shared.linear_init(k[0], channels["student"], width),
      "embed_teacher": shared.linear_init(k[1], channels["teacher"], width),
    }
    bound = 1.0 / np.sqrt(width / 3.0)
    bank = lambda key: jax.random.uniform(key, (num_data, width), jnp.float32, -bound, bound)
    memory = {"student": bank(k[2]), "teacher": bank(k[3]), "z": jnp.full((2,), -1.0, jnp.float32)}
    return {"student": params, "distiller": heads}, {"student": stats, "distiller": memory}

  def loss(params, batch_stats, teaching, batch, rng, step):
    x, y = batch["image"], batch["label"]
    logits, s_feats, stats = forward(
      student, params["student"], batch_stats["student"], x, True, rng, capture=(layers["student"],)
    )
    t_feats = teachers.features(ctx, teaching, batch, {"teacher": (layers["teacher"],)})["teacher"]
    heads = params["distiller"]
    e_s = embed(pooled(s_feats[layers["student"]]), heads["embed_student"])
    e_t = embed(pooled(jax.lax.stop_gradient(t_feats[layers["teacher"]])), heads["embed_teacher"])
    ids = sample_contrast(jax.random.fold_in(rng, 7), batch["index"], y, labels_by_id, table, cfg.negatives)
    value, memory = contrast(e_s, e_t, batch["index"], ids, batch_stats["distiller"], cfg.temperature, cfg.momentum)
    ce = losses.cross_entropy(logits, y)
    metrics = {"ce": ce, "crd": value, "accuracy": losses.accuracy(logits, y)}
    return ce + cfg.weight * value, (metrics, {"student": stats, "distiller": memory})

  return ctx.student_stage("crd", "student", loss, init=init, teacher_layers={"teacher": (layers["teacher"],)})


METHOD = Method(name="crd", stages=lambda ctx: [crd_stage(ctx)], teachers="one", defaults=defaults)
