"""Multi-teacher KD on SVHN: the maxout SVHN teacher and a WRN-16-4 teach the 13-layer FitNet
(`fitnet_svhn`) through their softened outputs averaged with weights from each teacher's
accuracy on 6,000 training images held out as a validation split. The FitNets KD loss (λ 4 → 1,
τ = 3) and the SVHN recipe of configs/svhn.py; the WRN trains with SGD 0.01, momentum 0.9,
weight decay 5e-4, as Zagoruyko & Komodakis do on SVHN.

  python -m fitnets_jax.main --config configs/multi_teacher_svhn.py --workdir runs/multi_teacher_svhn
"""

from fitnets_jax.configs import svhn  # the sibling config


def get_config():
  c = svhn.get_config()
  c.method = "multi_teacher"
  c.dataset.validation_examples = 6000
  c.teachers = [
    dict(model="maxout_svhn_teacher", input_dropout=[0.8, 0.5, 0.5, 0.5, 0.5]),  # svhn.py's teacher recipe
    dict(
      model="wrn_16_4",
      dropout=0.4,
      epochs=40.0,
      optimizer=dict(
        name="sgd",
        learning_rate=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        max_norm_conv=0.0,
        max_norm_dense=0.0,
        max_norm_logits=0.0,
        max_norm_layers={},  # not the maxout teacher's recipe (stages.teacher)
        momentum_final=0.0,
        conv_lr_scale=1.0,
        schedule="piecewise",
        boundaries_epochs=[16.0, 24.0, 32.0],
        decay_factor=0.1,
      ),
    ),
  ]
  c.multi_teacher.weights = "accuracy"
  return c
