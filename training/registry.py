"""Model name -> recipe: the five reference models (training.MODEL_NAMES)."""

from __future__ import annotations

from training import MODEL_NAMES
from training.models import cnn, lstm, mlp, perceptron, transformer
from training.recipe import Recipe

RECIPES: dict[str, Recipe] = {
    r.name: r for r in (perceptron.RECIPE, mlp.RECIPE, cnn.RECIPE, lstm.RECIPE, transformer.RECIPE)
}
assert tuple(RECIPES) == MODEL_NAMES


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; expected one of {', '.join(RECIPES)}") from None
