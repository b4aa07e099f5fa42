"""FitNets on MNIST (Romero et al. 2015, §4.2): maxout teacher (≈361K params in the paper) → 6-layer
maxout student (≈30K), hint = teacher conv2, guided = student conv4, RMSProp lr 0.0005, λ reaching 1
after 150 epochs. Needs MNIST prepared for TFDS (set dataset.data_dir, or dataset.download=True).

  python -m fitnets_jax.main --config configs/mnist.py --workdir runs/mnist
"""

from fitnets_jax.config import PAPER_MAX_NORM, base_config, stage_config


def get_config():
  c = base_config()
  c.dataset.name = "mnist"
  c.dataset.preprocess = "none"  # pixels in [0, 1], as in the maxout paper
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.teacher.model = "maxout_mnist_teacher"
  c.student.model = "fitnet_mnist"
  c.teacher.dropout = 0.5
  c.hint.teacher_layer = "conv2"  # 4×4×48
  c.hint.student_layer = "conv4"  # 7×7×16 → 4×4 regressor kernel
  c.kd.temperature = 3.0
  c.kd.lambda_decay_epochs = 150.0  # λ: 4 → 1 over 150 epochs, then 1
  c.stages.teacher = stage_config(epochs=200, learning_rate=0.005, **PAPER_MAX_NORM)
  c.stages.hint = stage_config(epochs=50, learning_rate=0.0005, **PAPER_MAX_NORM)
  c.stages.student = stage_config(epochs=300, learning_rate=0.0005, **PAPER_MAX_NORM)
  return c
