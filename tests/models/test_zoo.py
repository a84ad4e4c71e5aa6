"""Model registry: exact parameter counts, within 5 % of the paper's."""

import pytest

from tf_srkd.models import zoo as models

EXACT = {"lenet5": 61_706, "lenet5_half": 35_820, "alexnet": 1_656_266, "alexnet_half": 415_978}
SHAPES = {"lenet5": (28, 28, 1), "lenet5_half": (28, 28, 1), "alexnet": (32, 32, 3),
          "alexnet_half": (32, 32, 3)}


def test_registry_lists_the_four_models():
  assert set(models.MODELS) == set(EXACT)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_parameter_counts(name):
  model = models.build_model(name, SHAPES[name], 10)
  assert model.count_params() == EXACT[name]
  assert abs(model.count_params() / models.PAPER_PARAM_COUNTS[name] - 1) <= 0.05
  assert model.output_shape == (None, 10)


def test_unknown_model_names_the_choices():
  with pytest.raises(KeyError, match="lenet5"):
    models.get_model_spec("resnet")
