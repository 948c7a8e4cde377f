"""`Recipe`: the recovery fields validate (one error naming the field), label and round-trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compress.recipe import Recipe

S50 = {"prune": "structured", "ratio": 0.5, "round_to": 8, "finetune_steps": 20}

RECIPES = [
    (Recipe(), "dense+fp32+global"),
    (Recipe(**S50, prune_rounds=3), "structured0.50/r8+gradual3+ft20+fp32+global"),
    (Recipe(**S50, distill_weight=0.5), "structured0.50/r8+ft20+kd0.5+fp32+global"),
    (
        Recipe(**S50, distill_weight=2.0, distill_temperature=4.0),
        "structured0.50/r8+ft20+kd2(T4)+fp32+global",
    ),
    (
        Recipe(**S50, regularize_steps=100, regularize_strength=0.01),
        "reg100(0.01)+structured0.50/r8+ft20+fp32+global",
    ),
    (
        Recipe(
            prune="pairs",
            level_ratios=(0.0, 0.5, 0.5),
            finetune_steps=9,
            prune_rounds=2,
            distill_weight=1,
            regularize_steps=5,
            precision="int8",
        ),
        "reg5(0.001)+pairs[0.00,0.50,0.50]+gradual2+ft9+kd1+int8(minmax)+global",
    ),
    (
        Recipe(prune="unstructured", ratio=0.8, finetune_steps=4, prune_rounds=4),
        "unstructured0.80+gradual4+ft4+fp32+global",
    ),
    (
        Recipe(**S50, threshold="per-region", components="search", precision="int8"),
        "structured0.50/r8+ft20+int8(minmax)+per-region+cc",
    ),
    (
        Recipe(**S50, threshold="per-region", components="search", selection="one-se"),
        "structured0.50/r8+ft20+fp32+per-region+cc+1se",
    ),
    (
        Recipe(**S50, precision="int8", runtime="openvino", int8_max_drop=0.01),
        "structured0.50/r8+ft20+int8(minmax,ac0.01)+global@openvino",
    ),
]


@pytest.mark.parametrize(("recipe", "label"), RECIPES)
def test_label_and_json_round_trip(recipe: Recipe, label: str, tmp_path: Path) -> None:
    assert recipe.label == label
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe.to_dict()))
    assert Recipe.from_json(path) == recipe
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))).label == label


def test_integers_and_floats_from_json_make_the_same_recipe() -> None:
    a = Recipe.from_dict({**S50, "distill_weight": 1, "regularize_steps": 3})
    assert a == Recipe(**S50, distill_weight=1.0, regularize_steps=3)
    assert isinstance(a.to_dict()["distill_weight"], float)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # wrong type
        ({"prune_rounds": "3"}, "prune_rounds must be an integer in \\[1, 10\\], got '3'"),
        ({"prune_rounds": 2.5}, "prune_rounds must be an integer"),
        ({"prune_rounds": True}, "prune_rounds must be an integer"),
        ({"distill_weight": "1"}, "distill_weight must be a number in \\[0, 100\\]"),
        ({"distill_temperature": None}, "distill_temperature must be a number in \\(0, 20\\]"),
        ({"regularize_steps": 1.5}, "regularize_steps must be an integer in \\[0, 100000\\]"),
        ({"regularize_strength": "big"}, "regularize_strength must be a number in \\(0, 1\\]"),
        ({"finetune_steps": "20"}, "finetune_steps must be an integer >= 0"),
        ({"components": "largest"}, "components must be one of \\('keep', 'search'\\)"),
        ({"selection": "argmax"}, "selection must be one of \\('best', 'one-se'\\)"),
        (
            {"threshold": "fixed", "selection": "one-se"},
            "selection only applies when thresholds or components are searched",
        ),
        # out of range
        ({"prune_rounds": 0}, "prune_rounds must be an integer in \\[1, 10\\], got 0"),
        ({"prune_rounds": 11}, "prune_rounds must be an integer in \\[1, 10\\], got 11"),
        ({"distill_weight": -0.1}, "distill_weight must be a number in \\[0, 100\\]"),
        ({"distill_weight": float("nan")}, "distill_weight must be a number"),
        ({"distill_weight": 1e9}, "distill_weight must be a number in \\[0, 100\\]"),
        ({"distill_weight": 1, "distill_temperature": 0}, "distill_temperature .* got 0"),
        ({"distill_weight": 1, "distill_temperature": 21}, "distill_temperature .* got 21"),
        ({"regularize_steps": -1}, "regularize_steps must be an integer in \\[0, 100000\\]"),
        ({"regularize_steps": 1, "regularize_strength": 0.0}, "regularize_strength .* got 0.0"),
        ({"regularize_steps": 1, "regularize_strength": 2.0}, "regularize_strength .* got 2.0"),
        # fields that do not apply
        ({"prune": "none", "ratio": 0.0, "round_to": 1, "prune_rounds": 2}, "prune_rounds > 1"),
        ({"finetune_steps": 0, "distill_weight": 1.0}, "distill_weight > 0 needs finetune_steps"),
        ({"distill_temperature": 2.0}, "distill_temperature only applies"),
        (
            {"prune": "unstructured", "round_to": 1, "regularize_steps": 5},
            "regularize_steps only apply to structured/pairs",
        ),
        ({"regularize_strength": 0.01}, "regularize_strength only applies"),
        (
            {"int8_max_drop": 0.01},
            "int8_max_drop \\(NNCF accuracy control\\) needs precision int8 and runtime "
            "openvino, not fp32 on ort",
        ),
        (
            {"precision": "int8", "int8_max_drop": 0.01},
            "int8_max_drop .* not int8 on ort",
        ),
        (
            {"precision": "int8", "runtime": "openvino", "int8_max_drop": -0.01},
            "int8_max_drop must be a number in \\[0, 0.5\\], got -0.01",
        ),
        ({"int8_max_drop": "0.01"}, "int8_max_drop must be a number"),
    ],
)
def test_bad_recovery_fields_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^recipe: {message}"):
        Recipe(**{**S50, **fields})


def test_bad_field_in_a_recipe_file_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**S50, "prune_rounds": "many"}))
    with pytest.raises(ValueError, match="r.json: recipe: prune_rounds must be an integer"):
        Recipe.from_json(path)


def test_a_recipe_file_without_the_components_field_keeps_every_voxel() -> None:
    """recipe.json files written before the field existed load as before (no removal)."""
    old = {k: v for k, v in Recipe(**S50).to_dict().items() if k != "components"}
    assert Recipe.from_dict(old).components == "keep"


def test_a_recipe_file_without_the_selection_field_chooses_the_val_argmax() -> None:
    old = {k: v for k, v in Recipe(**S50).to_dict().items() if k != "selection"}
    assert Recipe.from_dict(old).selection == "best"
