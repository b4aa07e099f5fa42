"""FitNets on CIFAR-10 (Romero et al. 2015, §4.1): Goodfellow's maxout teacher (paper: 90.18 %) →
FitNet 4 (paper: 91.61 %), hint = teacher conv2 (7×7×192), guided = student conv11 (8×8×80, a 2×2
maxout regressor). GCN + ZCA whitening, random flips and shifts of up to 8 px, RMSProp lr 0.005,
max-norm 0.9 / 1.9 / 1.9365, λ 4 → 1 annealed from epoch 5 to epoch 400 (the authors' config).
`cifar10.py:fitnet1` … `:fitnet4` picks the student of Table 5.

  python -m fitnets_jax.main --config configs/cifar10.py --workdir runs/cifar10
  python -m fitnets_jax.main --config configs/cifar10.py:fitnet1 --workdir runs/cifar10_fitnet1
"""

from fitnets_jax.config import PAPER_MAX_NORM, base_config, stage_config

# FitNets Table 7 guided layers (hint: teacher conv2 for all four).
GUIDED = {"fitnet1": "conv6", "fitnet2": "conv6", "fitnet3": "conv8", "fitnet4": "conv11"}


def get_config(student="fitnet4", dataset="cifar10"):
  c = base_config()
  c.dataset.name = dataset
  c.dataset.preprocess = "gcn_zca"
  c.dataset.flip = True
  c.dataset.shift = 8
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.teacher.model = "maxout_cifar_teacher"
  c.teacher.dropout = 0.5
  c.student.model = student
  c.hint.teacher_layer = "conv2"
  c.hint.student_layer = GUIDED[student]
  c.kd.temperature = 3.0
  c.kd.lambda_decay_begin_epochs = 5.0
  c.kd.lambda_decay_epochs = 395.0
  c.stages.teacher = stage_config(epochs=400, learning_rate=0.005, **PAPER_MAX_NORM)
  c.stages.hint = stage_config(epochs=100, learning_rate=0.005, **PAPER_MAX_NORM)
  c.stages.student = stage_config(epochs=400, learning_rate=0.005, **PAPER_MAX_NORM)
  return c
