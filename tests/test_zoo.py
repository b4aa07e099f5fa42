"""The CIFAR-100 zoo of RepDistiller's model_dict and torchvision's ImageNet ResNets: each model's
parameters and conv/linear MACs equal its reference definition's, exactly, and its sections are the
feature points the multi-level methods read."""

import json
import os

import pytest

from fitnets_jax import models
from fitnets_jax.methods import shared
from fitnets_jax.network import network

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pytorch")
# Counted by tests/fixtures/pytorch/make_fixtures.py on the PyTorch definitions (RepDistiller's layout,
# torchvision's own ResNets): CIFAR models at 32×32 with 100 classes, ImageNet ones at 224×224 with 1000.
with open(os.path.join(FIXTURES, "zoo_counts.json")) as f:
  REFERENCE = json.load(f)


def zoo_network(name):
  imagenet = name.startswith("imagenet_")
  size = 224 if imagenet else 32
  return network(name, models.get_model(name, 1000 if imagenet else 100), (size, size, 3))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_zoo_model_has_its_reference_definitions_parameters_and_macs(name):
  net = zoo_network(name)
  assert (net.params, net.macs) == (REFERENCE[name]["params"], REFERENCE[name]["macs"])


def test_the_zoo_covers_repdistillers_model_dict_and_torchvisions_resnets():
  cifar = [f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)] + ["resnet8x4", "resnet32x4"]
  cifar += ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]
  cifar += ["MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18", "ResNet34", "ResNet50"]
  assert sorted(REFERENCE) == sorted(cifar + ["imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50"])


# RepDistiller's feature points (`is_feat=True`): f1 … f_k, the outputs the levels of ReviewKD, OFD, AB and
# the hint pairs read, and, with `preact=True`, the same before the last ReLU.
SECTION_OUTPUTS = {
  "resnet32x4": ["section1", "section2", "section3"],
  "wrn_40_2": ["section1", "section2", "section3"],
  "vgg13": ["block1", "block2", "block3", "block4"],
  "MobileNetV2": ["stage2", "stage3", "stage5", "stage7"],
  "ShuffleV1": ["section1", "section2", "section3"],
  "ShuffleV2": ["section1", "section2", "section3"],
  "ResNet50": ["section1", "section2", "section3", "section4"],
}
PREACT = {
  "resnet32x4": ["section1/block5/preact", "section2/block5/preact", "section3/block5/preact"],
  "wrn_40_2": ["section1", "section2", "section3"],  # pre-activation blocks end linearly
  "vgg13": [f"block{i}/preact" for i in range(1, 5)],
  "MobileNetV2": ["stage2", "stage3", "stage5", "stage7"],  # a stage ends in its linear BN
  "ShuffleV1": ["section1/unit4/preact", "section2/unit8/preact", "section3/unit4/preact"],
  "ShuffleV2": ["section1/unit3/preact", "section2/unit7/preact", "section3/unit3/preact"],
  "ResNet50": [f"section{i}/block{n}/preact" for i, n in zip((1, 2, 3, 4), (3, 4, 6, 3))],
}


@pytest.mark.parametrize("name", sorted(SECTION_OUTPUTS))
def test_zoo_sections_are_the_reference_feature_points_with_their_preactivations(name):
  net = zoo_network(name)
  assert [b for _, b in net.sections] == SECTION_OUTPUTS[name]
  assert shared.section_levels(net, "teacher", "x", [], preact=True) == PREACT[name]
  shapes = {l.name: l.shape for l in net.layers}
  # Each preactivation has its section output's shape (ShuffleV2's, taken before the shuffle, too).
  assert [shapes[p] for p in PREACT[name]] == [shapes[s] for s in SECTION_OUTPUTS[name]]
