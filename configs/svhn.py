"""FitNets on SVHN (Romero et al. 2015, §4.3): maxout teacher (paper: 4.9M params, 2.38 % error) →
13-layer FitNet (paper: 1.5M params, 2.42 % error). The student is FitNet 3's 11 maxout convs +
fc + softmax (the paper's §3.2 "13 layers"); hint = teacher conv2 (7×7), guided = student conv8
(8×8, a 2×2 regressor). 32×32 crops (`svhn_cropped`); add the extra split with
--config.dataset.train_split=train+extra as in the paper.

  python -m fitnets_jax.main --config configs/svhn.py --workdir runs/svhn
"""

from fitnets_jax.config import PAPER_MAX_NORM, base_config, stage_config


def get_config():
  c = base_config()
  c.dataset.name = "svhn_cropped"
  c.dataset.train_split = "train"
  c.dataset.preprocess = "standardize"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.teacher.model = "maxout_svhn_teacher"
  c.student.model = "fitnet_svhn"
  c.teacher.dropout = 0.5
  c.hint.teacher_layer = "conv2"
  c.hint.student_layer = "conv8"
  c.kd.temperature = 3.0
  c.stages.teacher = stage_config(epochs=50, learning_rate=0.005, **PAPER_MAX_NORM)
  c.stages.hint = stage_config(epochs=20, learning_rate=0.005, **PAPER_MAX_NORM)
  c.stages.student = stage_config(epochs=50, learning_rate=0.005, **PAPER_MAX_NORM)
  return c
