"""Every config key the trainer reads, with defaults; `configs/*.py` start from `base_config()`.

A run is described by one locked `ml_collections.ConfigDict`, so `--config.key=value` can
override anything and a typo fails with a "did you mean" suggestion.
"""

import ml_collections

METHODS = ("fitnets", "kd", "scratch")

# Max-norm limits of the maxout and FitNets papers' pylearn2 configs (conv / dense / softmax).
PAPER_MAX_NORM = dict(max_norm_conv=0.9, max_norm_dense=1.9, max_norm_logits=1.9365)


def optimizer_config(name="rmsprop", learning_rate=0.005, **overrides):
  """One stage's optimizer. RMSProp, lr 0.005, decay 0.9 is FitNets' recipe (SPEC §2)."""
  cfg = ml_collections.ConfigDict(dict(
      name=name,                 # rmsprop | sgd | adam | adamw
      learning_rate=learning_rate,
      schedule="constant",       # constant | cosine | piecewise
      boundaries_epochs=[0.0],   # piecewise: epochs at which lr is multiplied by decay_factor
      decay_factor=0.1,
      warmup_epochs=0.0,
      decay=0.9,                 # rmsprop: moving-average decay of squared gradients
      eps=1e-8,
      momentum=0.0,              # rmsprop / sgd momentum
      nesterov=False,
      weight_decay=0.0,          # decoupled, applied to trained parameters only
      grad_clip_norm=0.0,        # 0: off
      # Max-norm constraints (FitNets/maxout: conv 0.9, dense 1.9, softmax 1.9365); 0: off.
      max_norm_conv=0.0,
      max_norm_dense=0.0,
      max_norm_logits=0.0,
  ))
  cfg.update(overrides)
  return cfg


def stage_config(epochs, steps=0, **optimizer):
  """A training stage: its length (`steps` wins when > 0) and its own optimizer."""
  return ml_collections.ConfigDict(dict(
      epochs=float(epochs), steps=steps, optimizer=optimizer_config(**optimizer)))


def base_config():
  """Defaults shared by every config file; see README 'Config keys'."""
  c = ml_collections.ConfigDict()
  c.method = "fitnets"            # fitnets | kd | scratch
  c.seed = 0
  c.num_devices = 0               # data-parallel devices; 0: every device JAX sees
  c.distributed = False           # jax.distributed.initialize() first (TPU pod slices)
  c.batch_size = 128              # global batch, split over devices and hosts
  c.eval_batch_size = 500
  c.log_every_steps = 50
  c.eval_every_steps = 0          # 0: evaluate at each stage end only
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.on_nan = "stop"               # stop | skip_step: what a NaN/Inf loss or gradient does

  c.dataset = ml_collections.ConfigDict(dict(
      name="digits",              # digits | npz | svhn_cropped | cifar10 | cifar100 | mnist
      path="",                    # npz: the .npz file
      num_classes=0,              # npz: 0 infers max(train_labels) + 1
      data_dir="",                # TFDS data_dir (local or gs://); "" = TFDS default
      download=False,             # TFDS: never download unless asked
      train_split="train",        # e.g. "train+extra" for SVHN
      test_split="test",
      preprocess="standardize",   # standardize | gcn_zca | none
      stats_examples=10000,       # training examples used to fit mean/std or ZCA
      gcn_scale=55.0,
      zca_epsilon=0.1,
      flip=False,                 # random horizontal flips
      shift=0,                    # random shifts of up to this many pixels
      shuffle_buffer=50000,
  ))
  c.teacher = ml_collections.ConfigDict(dict(
      model="digits_teacher",
      checkpoint="",              # a run's workdir (or its teacher/ folder) to reuse
      dropout=0.0,
  ))
  c.student = ml_collections.ConfigDict(dict(model="digits_student", dropout=0.0))
  c.hint = ml_collections.ConfigDict(dict(
      teacher_layer="conv2",      # hint layer (python -m fitnets_jax.layers lists them)
      student_layer="conv5",      # guided layer
      regressor_init=0.05,        # U(±r) initialisation of the regressor; 0: lecun normal
  ))
  c.kd = ml_collections.ConfigDict(dict(
      loss="fitnets",             # fitnets: H(y,P_S) + λ·H(P_T^τ,P_S^τ) | hinton: α·τ²·KL + (1−α)·CE
      temperature=3.0,
      lambda_start=4.0,           # fitnets: λ annealed linearly start → end
      lambda_end=1.0,
      lambda_decay_begin_epochs=0.0,
      lambda_decay_epochs=-1.0,   # -1: until the end of the stage
      alpha=0.9,                  # hinton only
  ))
  c.stages = ml_collections.ConfigDict(dict(
      teacher=stage_config(epochs=100),   # trains the teacher unless teacher.checkpoint is set
      hint=stage_config(epochs=100),      # FitNets stage 1
      student=stage_config(epochs=100),   # KD stage (fitnets, kd) or labels only (scratch)
  ))
  return c
