"""FitNets on MNIST (Romero et al. 2015, §4.2): maxout teacher (≈361K params in the paper) → 6-layer
maxout student (≈30K), hint = teacher conv2, guided = student conv4, pylearn2's RMSProp (max_scaling
1e5: the RMS floored at 1e-5) lr 0.0005 with the yaml's per-layer max-norms (conv1–2 0.9, conv3–6
and softmax 1.9365; the regressor 0.9, as the authors' code), untied biases as both yamls, λ 4 held for
5 epochs, then annealed to 0 at epoch 150 (the authors' MNIST yaml: TeacherDecayOverEpoch start 5,
saturate 150, final 0; stepped per epoch there, linear per step here). Needs MNIST prepared for TFDS
(set dataset.data_dir, or dataset.download=True). The teacher trains as Goodfellow et al.'s
mnist.yaml: SGD lr 0.05 divided by 1.00004 every step (floor 1e-6), momentum 0.5 → 0.7 over epochs
1 → 250, per-layer max-norm, dropout on every layer's input (0.8 on the image, 0.5 elsewhere); the
yaml stops early, here it runs 200 epochs.

  python -m fitnets_jax.main --config configs/mnist.py --workdir runs/mnist
"""

from fitnets_jax.config import PYLEARN2_RMSPROP, base_config, maxout_teacher_stage, stage_config

# MNIST_fitnet_valid.yaml's max_kernel_norm / max_col_norm per layer (h0 … h5, y).
STUDENT_MAX_NORMS = {"conv1": 0.9, "conv2": 0.9, **{f"conv{i}": 1.9365 for i in range(3, 7)}, "logits": 1.9365}


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
  c.teacher.input_dropout = [0.8, 0.5, 0.5, 0.5]  # conv1 (the image), conv2, conv3, logits
  c.hint.teacher_layer = "conv2"  # 4×4×48
  c.hint.student_layer = "conv4"  # 4×4×16 → a 1×1 regressor (the yaml's hints [[3, 1]]: h3 ← h1)
  c.kd.temperature = 3.0
  c.kd.lambda_end = 0.0  # λ: 4 until epoch 5, then linear to 0 at epoch 150, then 0 (the authors' yaml)
  c.kd.lambda_decay_begin_epochs = 5.0
  c.kd.lambda_decay_epochs = 145.0
  c.stages.teacher = maxout_teacher_stage(
    200,
    0.05,
    momentum_final=0.7,
    conv_lr_scale=1.0,
    schedule="exponential",
    decay_factor=1 / 1.00004,
    min_learning_rate=1e-6,
  )
  student = dict(learning_rate=0.0005, max_norm_layers=STUDENT_MAX_NORMS, **PYLEARN2_RMSPROP)
  c.stages.hint = stage_config(epochs=50, **student)
  c.stages.student = stage_config(epochs=300, **student)
  return c
