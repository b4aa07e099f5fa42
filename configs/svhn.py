"""FitNets on SVHN (Romero et al. 2015, §4.3): maxout teacher (paper: 4.9M params, 2.38 % error) →
13-layer FitNet (paper: 1.5M params, 2.42 % error). The teacher is Goodfellow et al.'s SVHN maxout
net (pylearn2's svhn.yaml: 64/128/128 channels, 5×5 kernels, pools 3 s2, fc 400×5; 4.93M by the
paper's count), on their preprocessing (GCN, then LeCun's local contrast normalisation of every
channel, as pylearn2 did in May 2013) and the yaml's `splitted_train`: train+extra less 6,000
validation images, 598,388. pylearn2 picks those 6,000 as 400 per class from train and 200 per class
from extra; here they are the last 6,000 of extra (the same count, other images).
The student is FitNet 3's 11 maxout convs + fc + softmax (the
paper's §3.2 "13 layers"); hint = teacher conv2 (10×10×128), guided = student conv7 (16×16×80, the
middle of its 13 layers; a 7×7 regressor). 32×32 crops (`svhn_cropped`). The teacher trains as
svhn.yaml: SGD lr 0.2 falling linearly to 0.1 % by epoch 250, momentum 0.5 → 0.6 over epochs
1 → 250, conv learning rates × 0.05, per-layer max-norm, dropout on every layer's input (0.8 on the
image, 0.5 elsewhere), for the schedule's 250 epochs: the yaml also stops early (100 epochs without
a better validation error), which has no counterpart here. The students train with pylearn2's
RMSProp (RMS floored at 1e-5).

  python -m fitnets_jax.main --config configs/svhn.py --workdir runs/svhn
"""

from fitnets_jax.config import PAPER_MAX_NORM, PYLEARN2_RMSPROP, base_config, maxout_teacher_stage, stage_config


def get_config():
  c = base_config()
  c.dataset.name = "svhn_cropped"
  c.dataset.train_split = "train+extra"
  c.dataset.preprocess = "gcn_lcn"
  c.dataset.gcn_scale = 1.0  # pylearn2's GlobalContrastNormalization default
  c.dataset.lcn_all_channels = True  # pylearn2's LeCunLCN as of the maxout paper (May 2013)
  c.dataset.validation_examples = 6000  # splitted_train: 598,388 training images
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.teacher.model = "maxout_svhn_teacher"
  c.student.model = "fitnet_svhn"
  c.teacher.input_dropout = [0.8, 0.5, 0.5, 0.5, 0.5]  # conv1 (the image) … logits
  c.hint.teacher_layer = "conv2"
  c.hint.student_layer = "conv7"
  c.kd.temperature = 3.0
  c.stages.teacher = maxout_teacher_stage(
    250, 0.2, momentum_final=0.6, schedule="linear", boundaries_epochs=[1.0, 250.0], decay_factor=0.001
  )
  c.stages.hint = stage_config(epochs=20, learning_rate=0.005, **PYLEARN2_RMSPROP, **PAPER_MAX_NORM)
  c.stages.student = stage_config(epochs=50, learning_rate=0.005, **PYLEARN2_RMSPROP, **PAPER_MAX_NORM)
  return c
