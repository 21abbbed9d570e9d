"""Selection configs: LightlyOne's documented examples parse unchanged; every bad field is
rejected with its path."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cloud_selector.selection_config import (
    BalanceDistribution,
    BalanceStrategy,
    DiversityStrategy,
    EmbeddingsInput,
    InputType,
    MetadataInput,
    PredictionsInput,
    PredictionsName,
    RandomInput,
    ScoresInput,
    SelectionConfigError,
    SimilarityStrategy,
    StrategyType,
    ThresholdOperation,
    ThresholdStrategy,
    TypicalityStrategy,
    WeightsStrategy,
    parse_selection_config,
)

# ---- LightlyOne's documented examples, verbatim (docs.lightly.ai selection pages) -------

VISUAL_DIVERSITY = {"n_samples": 100, "strategies": [
    {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}]}

DIVERSITY_WITH_STOP = {"n_samples": 100, "strategies": [
    {"input": {"type": "EMBEDDINGS"},
     "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": 0.2, "strength": 0.6}}]}

ACTIVE_LEARNING = {"n_samples": 100, "strategies": [
    {"input": {"type": "SCORES", "task": "my_object_detection_task", "score": "uncertainty_entropy"},
     "strategy": {"type": "WEIGHTS"}}]}

CORAL = {"n_samples": 100, "strategies": [
    {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}},
    {"input": {"type": "SCORES", "task": "my_object_detection_task", "score": "uncertainty_entropy"},
     "strategy": {"type": "WEIGHTS"}}]}

METADATA_THRESHOLD = {"n_samples": 100, "strategies": [
    {"input": {"type": "METADATA", "key": "lightly.sharpness"},
     "strategy": {"type": "THRESHOLD", "threshold": 20, "operation": "BIGGER"}}]}

OBJECT_BALANCING = {"n_samples": 100, "strategies": [
    {"input": {"type": "PREDICTIONS", "task": "lightly_pretagging", "name": "CLASS_DISTRIBUTION"},
     "strategy": {"type": "BALANCE", "target": {"car": 0.1, "bicycle": 0.5, "bus": 0.1,
                                                "motorcycle": 0.1, "person": 0.1}}}]}

SIMILARITY_SEARCH = {"n_samples": 100, "strategies": [
    {"input": {"type": "EMBEDDINGS", "dataset_id": "DATASET_ID_OF_THE_QUERY_IMAGES",
               "tag_name": "TAG_NAME_OF_THE_QUERY_IMAGES"},
     "strategy": {"type": "SIMILARITY"}}]}

# LightlyOne's older worker docs: camelCase nSamples and the DIVERSIFY spelling.
LEGACY_CORESET = {"nSamples": 100, "strategies": [
    {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSIFY"}}]}

DOCUMENTED = [VISUAL_DIVERSITY, DIVERSITY_WITH_STOP, ACTIVE_LEARNING, CORAL, METADATA_THRESHOLD,
              OBJECT_BALANCING, SIMILARITY_SEARCH, LEGACY_CORESET]


@pytest.mark.parametrize("doc", DOCUMENTED, ids=lambda d: json.dumps(d)[:60])
def test_documented_examples_parse_and_round_trip(doc):
    config = parse_selection_config(doc)
    assert config.n_samples == 100 and config.proportion_samples is None
    canonical = config.to_dict()
    json.dumps(canonical)  # recordable as is
    assert parse_selection_config(canonical) == config


def test_documented_examples_mean_what_lightly_says():
    coral = parse_selection_config(CORAL)
    assert [e.strategy.type for e in coral.strategies] == [StrategyType.DIVERSITY, StrategyType.WEIGHTS]
    assert coral.strategies[1].input == ScoresInput(score="entropy", task="my_object_detection_task")

    stop = parse_selection_config(DIVERSITY_WITH_STOP).strategies[0].strategy
    assert stop == DiversityStrategy(strength=0.6, stopping_condition_minimum_distance=0.2)

    thr = parse_selection_config(METADATA_THRESHOLD).strategies[0]
    assert thr.input == MetadataInput(key="lightly.sharpness")
    assert thr.strategy == ThresholdStrategy(threshold=20.0, operation=ThresholdOperation.BIGGER)

    bal = parse_selection_config(OBJECT_BALANCING).strategies[0]
    assert bal.input.name is PredictionsName.CLASS_DISTRIBUTION
    assert bal.strategy.distribution is BalanceDistribution.TARGET
    assert dict(bal.strategy.target) == {"car": 0.1, "bicycle": 0.5, "bus": 0.1, "motorcycle": 0.1, "person": 0.1}

    sim = parse_selection_config(SIMILARITY_SEARCH).strategies[0]
    assert sim.input == EmbeddingsInput(tag_name="TAG_NAME_OF_THE_QUERY_IMAGES",
                                        dataset_id="DATASET_ID_OF_THE_QUERY_IMAGES")
    assert sim.strategy == SimilarityStrategy()

    legacy = parse_selection_config(LEGACY_CORESET)
    assert legacy == parse_selection_config(VISUAL_DIVERSITY)


def test_every_strategy_with_its_options():
    config = parse_selection_config({"proportion_samples": 0.5, "strategies": [
        {"input": {"type": "EMBEDDINGS"},
         "strategy": {"type": "TYPICALITY", "num_nearest_neighbors": 5,
                      "stopping_condition_minimum_typicality": 0.3, "strength": 2}},
        {"input": {"type": "RANDOM", "random_seed": 7},
         "strategy": {"type": "WEIGHTS", "strength": -1, "stopping_condition_max_sum": 3}},
        {"input": {"type": "METADATA", "key": "device_id"},
         "strategy": {"type": "BALANCE", "distribution": "UNIFORM", "strength": 0.5}},
        {"input": {"type": "PREDICTIONS", "name": "CATEGORY_COUNT", "categories": ["cat", "dog"]},
         "strategy": {"type": "THRESHOLD", "threshold": 1, "operation": "BIGGER_EQUAL"}},
        {"input": {"type": "SCORES", "score": "novelty"},
         "strategy": {"type": "THRESHOLD", "threshold": 0.2, "operation": "SMALLER_EQUAL"}},
    ]})
    s = config.strategies
    assert config.proportion_samples == 0.5 and config.n_samples is None
    assert s[0].strategy == TypicalityStrategy(strength=2.0, num_nearest_neighbors=5,
                                               stopping_condition_minimum_typicality=0.3)
    assert s[1].input == RandomInput(random_seed=7)
    assert s[1].strategy == WeightsStrategy(strength=-1.0, stopping_condition_max_sum=3.0)
    assert s[2].strategy == BalanceStrategy(distribution=BalanceDistribution.UNIFORM, strength=0.5)
    assert s[3].input == PredictionsInput(name=PredictionsName.CATEGORY_COUNT, categories=("cat", "dog"))
    assert s[4].input.type is InputType.SCORES
    assert parse_selection_config(config.to_dict()) == config


def test_defaults_follow_lightly():
    config = parse_selection_config({"n_samples": 3, "strategies": [
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY"}},
        {"input": {"type": "RANDOM"}, "strategy": {"type": "WEIGHTS"}}]})
    typ = config.strategies[0].strategy
    assert typ.num_nearest_neighbors == 20 and typ.strength == 1.0
    assert typ.stopping_condition_minimum_typicality is None
    assert config.strategies[1].input.random_seed == 0


def test_camel_case_spellings_are_the_same_fields():
    camel = parse_selection_config({"proportionSamples": 0.2, "strategies": [
        {"input": {"type": "EMBEDDINGS"},
         "strategy": {"type": "TYPICALITY", "numNearestNeighbors": 4, "stoppingConditionMinimumTypicality": 0.5}},
        {"input": {"type": "EMBEDDINGS", "tagName": "hard", "datasetId": "abc"}, "strategy": {"type": "SIMILARITY"}},
        {"input": {"type": "RANDOM", "randomSeed": 3}, "strategy": {"type": "WEIGHTS", "stoppingConditionMaxSum": 2}}]})
    snake = parse_selection_config({"proportion_samples": 0.2, "strategies": [
        {"input": {"type": "EMBEDDINGS"},
         "strategy": {"type": "TYPICALITY", "num_nearest_neighbors": 4, "stopping_condition_minimum_typicality": 0.5}},
        {"input": {"type": "EMBEDDINGS", "tag_name": "hard", "dataset_id": "abc"}, "strategy": {"type": "SIMILARITY"}},
        {"input": {"type": "RANDOM", "random_seed": 3}, "strategy": {"type": "WEIGHTS", "stopping_condition_max_sum": 2}}]})
    assert camel == snake


def test_records_are_frozen():
    config = parse_selection_config(VISUAL_DIVERSITY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_samples = 5
    with pytest.raises(TypeError):
        parse_selection_config(OBJECT_BALANCING).strategies[0].strategy.target["car"] = 1.0


@pytest.mark.parametrize("proportion, candidates, expected", [
    (0.25, 10, 3),   # 2.5 rounds half up
    (0.1, 10, 1),
    (0.15, 10, 2),   # 1.5 -> 2
    (0.01, 10, 1),   # at least one when there is one
    (1.0, 7, 7),
    (0.5, 0, 0),     # nothing to pick from
])
def test_proportion_samples_rounding(proportion, candidates, expected):
    config = parse_selection_config({"proportion_samples": proportion, "strategies": VISUAL_DIVERSITY["strategies"]})
    assert config.samples_for(candidates) == expected


def test_n_samples_is_taken_as_is():
    assert parse_selection_config(VISUAL_DIVERSITY).samples_for(3) == 100


# ---- errors name the path ----------------------------------------------------------------


def _with(strategy=None, inp=None, **top):
    entry = {"input": inp or {"type": "EMBEDDINGS"}, "strategy": strategy or {"type": "DIVERSITY"}}
    return {"n_samples": 10, "strategies": [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}, entry],
            **top}


def test_bad_operation_message_names_path_and_choices():
    bad = _with({"type": "THRESHOLD", "threshold": 1, "operation": "GREATER"}, {"type": "SCORES", "score": "entropy"})
    with pytest.raises(SelectionConfigError) as err:
        parse_selection_config(bad)
    assert str(err.value) == ("strategies[1].strategy.operation: must be one of BIGGER, BIGGER_EQUAL, "
                              "SMALLER, SMALLER_EQUAL, got 'GREATER'")
    assert isinstance(err.value, ValueError)
    assert err.value.path == "strategies[1].strategy.operation"


@pytest.mark.parametrize("config, path", [
    # top level
    ({"strategies": VISUAL_DIVERSITY["strategies"]}, ""),
    ({"n_samples": 1, "proportion_samples": 0.5, "strategies": VISUAL_DIVERSITY["strategies"]}, ""),
    ({"n_samples": 0, "strategies": VISUAL_DIVERSITY["strategies"]}, "n_samples"),
    ({"n_samples": -1, "strategies": VISUAL_DIVERSITY["strategies"]}, "n_samples"),
    ({"n_samples": 2.5, "strategies": VISUAL_DIVERSITY["strategies"]}, "n_samples"),
    ({"n_samples": True, "strategies": VISUAL_DIVERSITY["strategies"]}, "n_samples"),
    ({"proportion_samples": 0, "strategies": VISUAL_DIVERSITY["strategies"]}, "proportion_samples"),
    ({"proportion_samples": 1.2, "strategies": VISUAL_DIVERSITY["strategies"]}, "proportion_samples"),
    ({"proportion_samples": "0.5", "strategies": VISUAL_DIVERSITY["strategies"]}, "proportion_samples"),
    ({"n_samples": 5}, "strategies"),
    ({"n_samples": 5, "strategies": []}, "strategies"),
    ({"n_samples": 5, "strategies": {"input": {}}}, "strategies"),
    ({"n_samples": 5, "n_sample": 5, "strategies": VISUAL_DIVERSITY["strategies"]}, "n_sample"),
    ({"n_samples": 5, "nSamples": 5, "strategies": VISUAL_DIVERSITY["strategies"]}, "nSamples"),
    ({"n_samples": 5, "lightly_path_regex": ".*", "strategies": VISUAL_DIVERSITY["strategies"]}, "lightly_path_regex"),
    # entries
    ({"n_samples": 5, "strategies": ["DIVERSITY"]}, "strategies[0]"),
    ({"n_samples": 5, "strategies": [{"input": {"type": "EMBEDDINGS"}}]}, "strategies[0].strategy"),
    ({"n_samples": 5, "strategies": [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"},
                                      "weight": 1}]}, "strategies[0].weight"),
    # inputs
    (_with(inp={"type": "IMAGES"}), "strategies[1].input.type"),
    (_with(inp={"score": "entropy"}), "strategies[1].input.type"),
    (_with(inp={"type": "EMBEDDINGS", "kee": 1}), "strategies[1].input.kee"),
    (_with({"type": "WEIGHTS"}, {"type": "SCORES"}), "strategies[1].input.score"),
    (_with({"type": "WEIGHTS"}, {"type": "SCORES", "score": "sharpness"}), "strategies[1].input.score"),
    (_with({"type": "WEIGHTS"}, {"type": "SCORES", "score": "entropy", "key": "x"}), "strategies[1].input.key"),
    (_with({"type": "WEIGHTS"}, {"type": "METADATA"}), "strategies[1].input.key"),
    (_with({"type": "WEIGHTS"}, {"type": "METADATA", "key": ""}), "strategies[1].input.key"),
    (_with({"type": "WEIGHTS"}, {"type": "RANDOM", "random_seed": 1.5}), "strategies[1].input.random_seed"),
    (_with({"type": "WEIGHTS"}, {"type": "PREDICTIONS", "name": "CATEGORY_COUNT"}), "strategies[1].input.categories"),
    (_with({"type": "WEIGHTS"}, {"type": "PREDICTIONS", "name": "CATEGORY_COUNT", "categories": ["a", "a"]}),
     "strategies[1].input.categories"),
    (_with({"type": "BALANCE", "distribution": "UNIFORM"}, {"type": "PREDICTIONS"}), "strategies[1].input.name"),
    (_with({"type": "BALANCE", "distribution": "UNIFORM"}, {"type": "PREDICTIONS", "name": "HISTOGRAM"}),
     "strategies[1].input.name"),
    # input x strategy combinations (LightlyOne's table)
    (_with({"type": "DIVERSITY"}, {"type": "SCORES", "score": "entropy"}), "strategies[1].input.type"),
    (_with({"type": "TYPICALITY"}, {"type": "METADATA", "key": "t"}), "strategies[1].input.type"),
    (_with({"type": "WEIGHTS"}, {"type": "EMBEDDINGS"}), "strategies[1].input.type"),
    (_with({"type": "BALANCE", "distribution": "UNIFORM"}, {"type": "SCORES", "score": "entropy"}),
     "strategies[1].input.type"),
    (_with({"type": "BALANCE", "distribution": "UNIFORM"}, {"type": "RANDOM"}), "strategies[1].input.type"),
    (_with({"type": "WEIGHTS"}, {"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"}), "strategies[1].input.name"),
    (_with({"type": "BALANCE", "distribution": "UNIFORM"},
           {"type": "PREDICTIONS", "name": "CATEGORY_COUNT", "categories": ["a"]}), "strategies[1].input.name"),
    (_with({"type": "SIMILARITY"}), "strategies[1].input.tag_name"),
    (_with({"type": "DIVERSITY"}, {"type": "EMBEDDINGS", "tag_name": "q"}), "strategies[1].input"),
    # strategies
    (_with({"type": "DIVERSE"}), "strategies[1].strategy.type"),
    (_with({"strength": 1}), "strategies[1].strategy.type"),
    (_with({"type": "DIVERSITY", "strenght": 1}), "strategies[1].strategy.strenght"),
    (_with({"type": "DIVERSITY", "strength": "high"}), "strategies[1].strategy.strength"),
    (_with({"type": "DIVERSITY", "strength": 2e9}), "strategies[1].strategy.strength"),
    (_with({"type": "DIVERSITY", "strength": float("nan")}), "strategies[1].strategy.strength"),
    (_with({"type": "DIVERSITY", "stopping_condition_minimum_distance": 2.5}),
     "strategies[1].strategy.stopping_condition_minimum_distance"),
    (_with({"type": "DIVERSITY", "num_nearest_neighbors": 5}), "strategies[1].strategy.num_nearest_neighbors"),
    (_with({"type": "TYPICALITY", "num_nearest_neighbors": 1}), "strategies[1].strategy.num_nearest_neighbors"),
    (_with({"type": "TYPICALITY", "num_nearest_neighbors": 3.0}), "strategies[1].strategy.num_nearest_neighbors"),
    (_with({"type": "TYPICALITY", "stopping_condition_minimum_typicality": 0}),
     "strategies[1].strategy.stopping_condition_minimum_typicality"),
    (_with({"type": "TYPICALITY", "stopping_condition_minimum_typicality": 1.5}),
     "strategies[1].strategy.stopping_condition_minimum_typicality"),
    (_with({"type": "WEIGHTS", "stopping_condition_max_sum": -1}, {"type": "RANDOM"}),
     "strategies[1].strategy.stopping_condition_max_sum"),
    (_with({"type": "THRESHOLD", "operation": "BIGGER"}, {"type": "RANDOM"}), "strategies[1].strategy.threshold"),
    (_with({"type": "THRESHOLD", "threshold": 0.5}, {"type": "RANDOM"}), "strategies[1].strategy.operation"),
    (_with({"type": "THRESHOLD", "threshold": 0.5, "operation": "BIGGER", "strength": 2}, {"type": "RANDOM"}),
     "strategies[1].strategy.strength"),
    (_with({"type": "BALANCE"}, {"type": "METADATA", "key": "w"}), "strategies[1].strategy"),
    (_with({"type": "BALANCE", "distribution": "TARGET"}, {"type": "METADATA", "key": "w"}),
     "strategies[1].strategy.target"),
    (_with({"type": "BALANCE", "distribution": "NORMAL"}, {"type": "METADATA", "key": "w"}),
     "strategies[1].strategy.distribution"),
    (_with({"type": "BALANCE", "distribution": "UNIFORM", "target": {"a": 0.5}}, {"type": "METADATA", "key": "w"}),
     "strategies[1].strategy.target"),
    (_with({"type": "BALANCE", "target": {"a": 0.7, "b": 0.6}}, {"type": "METADATA", "key": "w"}),
     "strategies[1].strategy.target"),
    (_with({"type": "BALANCE", "target": {"a": -0.1}}, {"type": "METADATA", "key": "w"}),
     "strategies[1].strategy.target.a"),
    (_with({"type": "BALANCE", "target": {}}, {"type": "METADATA", "key": "w"}), "strategies[1].strategy.target"),
    (_with({"type": "BALANCE", "target": {"a": 0.5}, "target_range": {}}, {"type": "METADATA", "key": "w"}),
     "strategies[1].strategy.target_range"),
])
def test_bad_fields_are_rejected_with_their_path(config, path):
    with pytest.raises(SelectionConfigError) as err:
        parse_selection_config(config)
    assert err.value.path == path, str(err.value)
    if path:
        assert str(err.value).startswith(f"{path}: ")


def test_unknown_field_lists_the_allowed_ones():
    with pytest.raises(SelectionConfigError, match=r"strategies\[1\]\.strategy\.strenght: unknown field; "
                                                   r"allowed here: stopping_condition_minimum_distance, strength, type"):
        parse_selection_config(_with({"type": "DIVERSITY", "strenght": 1}))


def test_not_an_object():
    with pytest.raises(SelectionConfigError, match="must be an object"):
        parse_selection_config([VISUAL_DIVERSITY])
