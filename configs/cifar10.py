"""FitNets on CIFAR-10 (Romero et al. 2015, §4.1): Goodfellow's maxout teacher (paper: 90.18 %) →
FitNet 4 (paper: 91.61 %), hint = teacher conv2 (7×7×192), guided = student conv11 (8×8×80, a 2×2
maxout regressor). GCN + ZCA whitening fitted on all 50K training images (pylearn2's
make_cifar10_gcn_whitened), random flips and shifts of up to 4 px (cifar10.yaml's pad_randomized: 4).
The teacher trains as Goodfellow et al.'s cifar10.yaml: 474 epochs of SGD lr 0.17 falling linearly to 1 % by epoch 500,
momentum 0.5 → 0.65 over epochs 1 → 250, conv learning rates × 0.05, per-layer max-norm, dropout on
every layer's input (0.8 on the image, 0.5 elsewhere). The students as the FitNets authors'
cifar10_fitnet19 yaml: pylearn2's RMSProp (RMS floored at 1e-5) lr 0.005, the convolutions' rate × 0.05
(not the regressor's, which has no W_lr_scale), max-norm 0.9 / 1.9 / 1.9365 (the regressor 0.9),
λ 4 → 1 annealed from epoch 5 to epoch 400.
`cifar10.py:fitnet1` … `:fitnet4` picks the student of Table 5.

  python -m fitnets_jax.main --config configs/cifar10.py --workdir runs/cifar10
  python -m fitnets_jax.main --config configs/cifar10.py:fitnet1 --workdir runs/cifar10_fitnet1
"""

from fitnets_jax.config import PAPER_MAX_NORM, PYLEARN2_RMSPROP, base_config, maxout_teacher_stage, stage_config

# FitNets Table 7 guided layers (hint: teacher conv2 for all four).
GUIDED = {"fitnet1": "conv6", "fitnet2": "conv6", "fitnet3": "conv8", "fitnet4": "conv11"}


def get_config(student="fitnet4", dataset="cifar10"):
  c = base_config()
  c.dataset.name = dataset
  c.dataset.preprocess = "gcn_zca"
  c.dataset.flip = True
  c.dataset.shift = 4
  c.dataset.stats_examples = 0  # ZCA fitted on every training image, as pylearn2
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.teacher.model = "maxout_cifar_teacher"
  c.teacher.input_dropout = [0.8, 0.5, 0.5, 0.5, 0.5]  # conv1 (the image) … logits
  c.student.model = student
  c.hint.teacher_layer = "conv2"
  c.hint.student_layer = GUIDED[student]
  c.kd.temperature = 3.0
  c.kd.lambda_decay_begin_epochs = 5.0
  c.kd.lambda_decay_epochs = 395.0
  c.stages.teacher = maxout_teacher_stage(
    474, 0.17, momentum_final=0.65, schedule="linear", boundaries_epochs=[1.0, 500.0], decay_factor=0.01
  )
  student = dict(learning_rate=0.005, conv_lr_scale=0.05, **PYLEARN2_RMSPROP, **PAPER_MAX_NORM)
  c.stages.hint = stage_config(epochs=100, **student)
  c.stages.student = stage_config(epochs=400, **student)
  return c
