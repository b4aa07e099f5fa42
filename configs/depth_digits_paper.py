"""The FitNets depth experiment on digits under the paper's recipe (Romero et al. 2015, §4.4 and §4):
thin students of growing depth at a fixed number of multiplications (`digits_macs_D`: 5 … 21 weight
layers, ≈363K MACs, no batch norm, U(±0.005) initialisation), each trained from scratch, with KD
and with FitNets, over 3 seeds, from one teacher trained once (its outputs cached).

  python -m fitnets_jax.tools.depth_sweep --config configs/depth_digits_paper.py --workdir runs/depth_digits_paper

The recipe is the FitNets students': pylearn2's RMSProp (decay 0.9, the RMS floored at 1e-5) at
lr 0.005, max-norm 0.9 / 1.9 / 1.9365 (conv / dense / softmax), the regressor U(±0.05) with
max-norm 0.9, the hint loss reduced as the authors' HintCost, the guided layer in the middle (the
last conv of the first half), the FitNets KD loss at τ = 3 with λ falling linearly from 4 to 1.
Every student gets 80 epochs: FitNets spends 20 in the hint stage and 60 in the KD stage; scratch
and KD train all 80 on their one loss (`sweep.equal_budget`). The teacher is the digits one. These
settings were fixed before any result of this sweep was seen; `configs/depth_digits.py` is the
first sweep (≈18K parameters, LeCun-normal init, RMSProp at 1e-3), kept for comparison.
"""

import ml_collections

from fitnets_jax.config import PAPER_MAX_NORM, PYLEARN2_RMSPROP, stage_config
from fitnets_jax.configs import digits  # the sibling config: data and teacher


def get_config():
  c = digits.get_config()
  c.teacher.cache = True  # one teacher, its outputs computed once per run
  c.log_every_steps = 460  # 20 epochs of 23 steps
  c.checkpoint_every_steps = 1000
  c.kd.loss = "fitnets"
  c.kd.temperature = 3.0
  c.kd.lambda_start, c.kd.lambda_end = 4.0, 1.0
  student = dict(learning_rate=0.005, **PYLEARN2_RMSPROP, **PAPER_MAX_NORM)
  c.stages.hint = stage_config(epochs=20, **student)
  c.stages.student = stage_config(epochs=60, **student)
  c.sweep = ml_collections.ConfigDict(
    dict(
      family="digits_macs",  # students at ≈363K multiplications, U(±0.005)
      depths=[5, 7, 9, 11, 13, 17, 21],  # weight layers of digits_macs_D
      methods=["scratch", "kd", "fitnets"],
      seeds=3,  # config.seed … config.seed + seeds − 1
      equal_budget=True,  # scratch and kd train for stages.hint.epochs + stages.student.epochs
    )
  )
  return c
