"""The standard CIFAR-100 comparison of CRD (Tian et al. 2020), ReviewKD and DKD (Zhao et al. 2022):
one teacher → student pair of RepDistiller's zoo, trained with those papers' recipe. SGD lr 0.05
(0.01 for the MobileNetV2 and ShuffleNet students), momentum 0.9, weight decay 5e-4, batch 64, 240
epochs, lr × 0.1 at epochs 150, 180 and 210, random crop (4-pixel padding) and flip, per-channel
standardisation with their constants (RepDistiller's CIFAR-100 mean and std). KD is Hinton's with
α = 0.9, τ = 4 (RepDistiller's `-r 0.1 -a 0.9`). Methods with a first stage (fitnets, ab) spend 20
epochs on it at the student's learning rate, constant, before the 240.

The teacher is imported from its PyTorch checkpoint (docs/teachers.md), e.g.

  python -m fitnets_jax.import_teacher --from pytorch --model resnet32x4 \
      --checkpoint save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --out teachers/resnet32x4
  python -m fitnets_jax.main --config configs/cifar100_pairs.py:resnet32x4-resnet8x4 --workdir runs/r32x4_r8x4 \
      --config.teacher.checkpoint=teachers/resnet32x4 --config.method=dkd
  python -m fitnets_jax.tools.compare --config configs/cifar100_pairs.py:resnet32x4-resnet8x4 \
      --workdir runs/compare_r32x4_r8x4 --config.teacher.checkpoint=teachers/resnet32x4

`compare.methods` and `compare.seeds` are what `fitnets_jax.tools.compare` runs (docs/comparison.md).
"""

import ml_collections

from fitnets_jax.config import NORMALISATIONS, base_config, stage_config

PAIRS = (  # teacher-student, as CRD's Tables 1 and 2 and DKD's tables pair them
  "resnet56-resnet20",
  "resnet110-resnet32",
  "resnet32x4-resnet8x4",
  "wrn_40_2-wrn_16_2",
  "wrn_40_2-wrn_40_1",
  "vgg13-vgg8",
  "vgg13-MobileNetV2",
  "ResNet50-MobileNetV2",
  "resnet32x4-ShuffleV1",
  "resnet32x4-ShuffleV2",
)
LOW_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def sgd(epochs, lr, boundaries=()):
  return stage_config(
    epochs=epochs,
    name="sgd",
    learning_rate=lr,
    momentum=0.9,
    weight_decay=5e-4,
    schedule="piecewise" if boundaries else "constant",
    boundaries_epochs=list(boundaries),
    decay_factor=0.1,
  )


def second_feature_point(model):
  """RepDistiller's `hint_layer=2` (feat[2]) for FitNets' hint: the second section's output."""
  return "block2" if model.startswith("vgg") else "stage3" if model == "MobileNetV2" else "section2"


# Where the student's second feature point is smaller than the teacher's (8×8 against 16×16),
# RepDistiller's regressor up-samples it with a transposed conv; FitNets' regressor (a conv of kernel
# N_g − N_h + 1) cannot, so the student's guided layer is its feature point at the teacher's resolution.
GUIDED_AT_TEACHER_RESOLUTION = {
  "ResNet50-MobileNetV2": "stage2",
  "resnet32x4-ShuffleV1": "section1",
  "resnet32x4-ShuffleV2": "section1",
}


def get_config(pair="resnet32x4-resnet8x4"):
  if pair not in PAIRS:
    raise ValueError(f"configs/cifar100_pairs.py:{pair}: choose one of {', '.join(PAIRS)}.")
  teacher, student = pair.split("-")
  c = base_config()
  c.method = "kd"
  c.dataset.name = "cifar100"
  c.dataset.flip = True
  c.dataset.shift = 4
  c.dataset.mean, c.dataset.std = map(list, NORMALISATIONS["cifar100"])  # what the imported teachers expect
  c.batch_size = 64
  c.eval_batch_size = 1000
  c.log_every_steps = 782  # one epoch of 50,000 / 64
  c.checkpoint_every_steps = 3910  # five epochs
  c.teacher.model, c.student.model = teacher, student
  c.hint.teacher_layer = second_feature_point(teacher)
  c.hint.student_layer = GUIDED_AT_TEACHER_RESOLUTION.get(pair, second_feature_point(student))
  c.kd.loss, c.kd.alpha, c.kd.temperature = "hinton", 0.9, 4.0
  lr = 0.01 if student in LOW_LR_STUDENTS else 0.05
  c.stages.teacher = sgd(240, 0.05, (150, 180, 210))  # when the run trains its own teacher
  c.stages.hint = sgd(20, lr)
  c.stages.student = sgd(240, lr, (150, 180, 210))
  c.compare = ml_collections.ConfigDict(dict(methods=["scratch", "kd"], seeds=3))
  return c
