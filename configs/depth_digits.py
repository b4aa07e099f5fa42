"""The FitNets depth experiment on digits (Romero et al. 2015, §4.4, Figure 3): thin students of
growing depth at about the same number of parameters (`digits_thin_D`: 5 … 21 weight layers, ≈18K
parameters, no batch norm), each trained from scratch, with KD and with FitNets, over 3 seeds, from
one teacher trained once (its outputs cached).

  python -m fitnets_jax.tools.depth_sweep --config configs/depth_digits.py --workdir runs/depth_digits

Every student gets the same budget: 30 epochs. FitNets spends 10 of them in the hint stage and 20
in the KD stage; scratch and KD train all 30 on their one loss (`sweep.equal_budget`). The
settings below were fixed before any result of the sweep was seen.
"""

import ml_collections

from fitnets_jax.config import stage_config
from fitnets_jax.configs import digits  # the sibling config


def get_config():
  c = digits.get_config()
  c.teacher.cache = True  # one teacher, its outputs computed once per run
  c.log_every_steps = 230  # 10 epochs of 23 steps
  c.checkpoint_every_steps = 1000
  c.stages.hint = stage_config(epochs=10, name="rmsprop", learning_rate=1e-3)
  c.stages.student = stage_config(epochs=20, name="rmsprop", learning_rate=1e-3, schedule="cosine")
  c.sweep = ml_collections.ConfigDict(
    dict(
      family="digits_thin",  # students at ≈18K parameters
      depths=[5, 7, 9, 11, 13, 17, 21],  # weight layers of digits_thin_D
      methods=["scratch", "kd", "fitnets"],
      seeds=3,  # config.seed … config.seed + seeds − 1
      equal_budget=True,  # scratch and kd train for stages.hint.epochs + stages.student.epochs
    )
  )
  return c
