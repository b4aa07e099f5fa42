"""The ImageNet pair of CRD's and DKD's tables: ResNet-34 → ResNet-18, the teacher torchvision's
(IMAGENET1K_V1, 73.314 % top-1) imported from its PyTorch checkpoint (docs/teachers.md). mdistiller's
recipe (configs/imagenet/r34_r18/kd.yaml): SGD lr 0.2, momentum 0.9, weight decay 1e-4, batch 512,
100 epochs, lr × 0.1 at epochs 30, 60 and 90; KD with τ = 1 and CE and KD weighted ½ each (α = 0.5).
Published top-1 of the student: 69.75 % alone (torchvision's ResNet-18), KD 71.03 %, DKD 71.70 %
(mdistiller's README).

The input path is the streaming one (`dataset.streaming`): ImageNet in TFDS's ArrayRecord files,
read by index on every host in one global order, with torchvision's training augmentation (a
random-resized crop to 224×224 and a flip) and evaluation crop (the shorter side to 256, the centre
224×224), normalised with torchvision's constants.

  tfds build imagenet2012 --manual_dir=… --file_format=array_record --data_dir=gs://bucket/tfds
  python -m fitnets_jax.import_teacher --from pytorch --model imagenet_resnet34 \
      --checkpoint resnet34-b627a593.pth --out teachers/imagenet_resnet34
  python -m fitnets_jax.main --config configs/imagenet_pair.py --workdir gs://bucket/runs/r34_r18 \
      --config.dataset.data_dir=gs://bucket/tfds --config.teacher.checkpoint=teachers/imagenet_resnet34
"""

from fitnets_jax.config import NORMALISATIONS, base_config, stage_config

STEPS_PER_EPOCH = 1281167 // 512


def get_config():
  c = base_config()
  c.method = "kd"
  c.dataset.name = "imagenet2012"
  c.dataset.streaming = True
  c.dataset.resize = [224, 224]
  c.dataset.crop = "imagenet"
  c.dataset.flip = True
  c.dataset.test_split = "validation"
  c.dataset.mean, c.dataset.std = map(list, NORMALISATIONS["imagenet"])
  c.dataset.shuffle_buffer = 1281167  # the whole split: one permutation of the positions per epoch
  c.batch_size = 512
  c.eval_batch_size = 500
  c.log_every_steps = 500
  c.checkpoint_every_steps = STEPS_PER_EPOCH
  c.teacher.model, c.student.model = "imagenet_resnet34", "imagenet_resnet18"
  c.kd.loss, c.kd.alpha, c.kd.temperature = "hinton", 0.5, 1.0
  sgd = dict(name="sgd", momentum=0.9, weight_decay=1e-4, schedule="piecewise", decay_factor=0.1)
  c.stages.teacher = stage_config(epochs=90, learning_rate=0.1, boundaries_epochs=[30, 60], **sgd)
  c.stages.student = stage_config(epochs=100, learning_rate=0.2, boundaries_epochs=[30, 60, 90], **sgd)
  return c
