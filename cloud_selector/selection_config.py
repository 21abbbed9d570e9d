"""LightlyOne's selection config, parsed into frozen records and checked before any work.

Users arrive with configs written for LightlyOne, so we accept its schema unchanged (snake_case
or the API's camelCase spellings, e.g. ``n_samples`` / ``nSamples``) and reject everything it
would reject: a config that parses here means the same thing it means there, and a config that
cannot mean anything fails now with the path of the bad field, not halfway through a run.

Public face::

    parse_selection_config(data: Mapping) -> SelectionConfig     # raises SelectionConfigError
    SelectionConfig.to_dict() -> dict                             # canonical, JSON-ready

Exceptions (one tree)::

    ValueError
     └── SelectionConfigError   message = "<path>: <what is wrong>", e.g.
                                "strategies[1].strategy.operation: must be one of BIGGER, ..."

Which input each strategy accepts follows LightlyOne's "Input and Strategy Combinations" table:

    DIVERSITY, TYPICALITY, SIMILARITY  <- EMBEDDINGS
    WEIGHTS, THRESHOLD                 <- SCORES, METADATA (numeric), RANDOM,
                                          PREDICTIONS with name CATEGORY_COUNT
    BALANCE                            <- METADATA (categorical),
                                          PREDICTIONS with name CLASS_DISTRIBUTION

Pure: no I/O, no clocks; what the pool holds (metadata keys, tags, class names) is checked by
the engine, which raises the same error class with the same paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

__all__ = [
    "EDGE_SCORES",
    "BalanceDistribution",
    "BalanceStrategy",
    "DiversityStrategy",
    "EmbeddingsInput",
    "InputType",
    "MetadataInput",
    "PredictionsInput",
    "PredictionsName",
    "RandomInput",
    "ScoresInput",
    "SelectionConfig",
    "SelectionConfigError",
    "SelectionEntry",
    "SelectionInput",
    "SelectionStrategy",
    "SimilarityStrategy",
    "StrategyType",
    "ThresholdOperation",
    "ThresholdStrategy",
    "TypicalityStrategy",
    "WeightsStrategy",
    "parse_selection_config",
]


class SelectionConfigError(ValueError):
    """A selection config that cannot run; the message starts with the bad field's path."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class InputType(str, Enum):
    EMBEDDINGS = "EMBEDDINGS"
    SCORES = "SCORES"
    PREDICTIONS = "PREDICTIONS"
    METADATA = "METADATA"
    RANDOM = "RANDOM"


class StrategyType(str, Enum):
    DIVERSITY = "DIVERSITY"
    TYPICALITY = "TYPICALITY"
    WEIGHTS = "WEIGHTS"
    THRESHOLD = "THRESHOLD"
    BALANCE = "BALANCE"
    SIMILARITY = "SIMILARITY"


class ThresholdOperation(str, Enum):
    BIGGER = "BIGGER"
    BIGGER_EQUAL = "BIGGER_EQUAL"
    SMALLER = "SMALLER"
    SMALLER_EQUAL = "SMALLER_EQUAL"


class BalanceDistribution(str, Enum):
    TARGET = "TARGET"    # the fractions in `target`; the remainder goes to all other classes
    UNIFORM = "UNIFORM"  # every class equally
    INPUT = "INPUT"      # the pool's own distribution: keep the selection representative


class PredictionsName(str, Enum):
    CLASS_DISTRIBUTION = "CLASS_DISTRIBUTION"  # the probability vector (for BALANCE)
    CATEGORY_COUNT = "CATEGORY_COUNT"          # 1 if the predicted class is in `categories`


EDGE_SCORES = ("least_confidence", "margin", "entropy", "novelty", "combined")
"""Scores the edge computes per frame (Lightly's definitions; see edge_agent.scoring)."""

# LightlyOne's scorer names for the same quantities, so its active-learning examples run as is.
_SCORE_ALIASES = {
    "uncertainty_least_confidence": "least_confidence",
    "uncertainty_margin": "margin",
    "uncertainty_entropy": "entropy",
}

# Legacy spelling from LightlyOne's older docs ("DIVERSIFY"); the same strategy.
_STRATEGY_ALIASES = {"DIVERSIFY": "DIVERSITY"}

# LightlyOne's API spells these in camelCase; both spellings mean the same field.
_CAMEL = {
    "nSamples": "n_samples", "proportionSamples": "proportion_samples",
    "datasetId": "dataset_id", "tagName": "tag_name", "randomSeed": "random_seed",
    "numNearestNeighbors": "num_nearest_neighbors",
    "stoppingConditionMinimumTypicality": "stopping_condition_minimum_typicality",
    "stoppingConditionMaxSum": "stopping_condition_max_sum", "targetRange": "target_range",
    "lightlyPathRegex": "lightly_path_regex", "autoTasks": "auto_tasks",
}

# Fields LightlyOne has that we recognise but cannot honour: a clear "not supported" beats
# silently ignoring something that would change the result.
_UNSUPPORTED = {
    "lightly_path_regex": "filename-regex metadata is not supported; send metadata with the candidate",
    "auto_tasks": "auto tasks (crops, tiling) are not supported",
    "target_range": "BALANCE target ranges are not supported; give target fractions",
}

DEFAULT_NUM_NEAREST_NEIGHBORS = 20
"""LightlyOne's default for TYPICALITY (and the K of TypiClust's paper)."""

MAX_ABS_STRENGTH = 1e9  # LightlyOne's bound, there to keep exponents finite


# ---- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingsInput:
    """The candidates' embeddings. ``tag_name`` names the query set, for SIMILARITY only.

    ``dataset_id`` and ``task`` are accepted as in LightlyOne and ignored: there is one
    dataset and one task per pool here.
    """

    tag_name: str | None = None
    dataset_id: str | None = None
    task: str | None = None
    type: InputType = field(default=InputType.EMBEDDINGS, init=False)


@dataclass(frozen=True)
class ScoresInput:
    """One of the edge scores (``EDGE_SCORES``); ``task`` is accepted and ignored."""

    score: str
    task: str | None = None
    type: InputType = field(default=InputType.SCORES, init=False)


@dataclass(frozen=True)
class PredictionsInput:
    """The model's class probabilities. CLASS_DISTRIBUTION feeds BALANCE; CATEGORY_COUNT
    (1 when the predicted class is one of ``categories``, else 0) feeds WEIGHTS/THRESHOLD."""

    name: PredictionsName
    task: str | None = None
    categories: tuple[str, ...] = ()
    dataset_id: str | None = None
    tag_name: str | None = None
    type: InputType = field(default=InputType.PREDICTIONS, init=False)


@dataclass(frozen=True)
class MetadataInput:
    """A metadata key of the candidates: numeric for WEIGHTS/THRESHOLD, categorical for BALANCE."""

    key: str
    type: InputType = field(default=InputType.METADATA, init=False)


@dataclass(frozen=True)
class RandomInput:
    """A seeded uniform draw in [0, 1) per sample (same seed -> same draws)."""

    random_seed: int = 0
    type: InputType = field(default=InputType.RANDOM, init=False)


SelectionInput = EmbeddingsInput | ScoresInput | PredictionsInput | MetadataInput | RandomInput


@dataclass(frozen=True)
class DiversityStrategy:
    """Prefer samples far (Euclidean, unit-length embeddings, so 0..2) from everything selected.

    ``stopping_condition_minimum_distance``: no two selected samples closer than this.
    """

    strength: float = 1.0
    stopping_condition_minimum_distance: float | None = None
    type: StrategyType = field(default=StrategyType.DIVERSITY, init=False)


@dataclass(frozen=True)
class TypicalityStrategy:
    """Prefer typical samples (TypiClust); ``stopping_condition_minimum_typicality`` in (0, 1]
    is relative to the pool's most typical sample."""

    strength: float = 1.0
    num_nearest_neighbors: int = DEFAULT_NUM_NEAREST_NEIGHBORS
    stopping_condition_minimum_typicality: float | None = None
    type: StrategyType = field(default=StrategyType.TYPICALITY, init=False)


@dataclass(frozen=True)
class WeightsStrategy:
    """Prefer samples with a high input value; stop once the picks' values sum to
    ``stopping_condition_max_sum``."""

    strength: float = 1.0
    stopping_condition_max_sum: float | None = None
    type: StrategyType = field(default=StrategyType.WEIGHTS, init=False)


@dataclass(frozen=True)
class ThresholdStrategy:
    """Keep only samples whose input value passes ``value <operation> threshold``."""

    threshold: float
    operation: ThresholdOperation
    type: StrategyType = field(default=StrategyType.THRESHOLD, init=False)


@dataclass(frozen=True)
class BalanceStrategy:
    """Steer the selection's class histogram toward a distribution. ``target`` maps class
    name -> fraction (sum <= 1; the remainder is the target of all other classes together)."""

    distribution: BalanceDistribution
    target: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    strength: float = 1.0
    type: StrategyType = field(default=StrategyType.BALANCE, init=False)


@dataclass(frozen=True)
class SimilarityStrategy:
    """Prefer samples close to the query set named by the input's ``tag_name``."""

    strength: float = 1.0
    type: StrategyType = field(default=StrategyType.SIMILARITY, init=False)


SelectionStrategy = (DiversityStrategy | TypicalityStrategy | WeightsStrategy
                     | ThresholdStrategy | BalanceStrategy | SimilarityStrategy)


@dataclass(frozen=True)
class SelectionEntry:
    input: SelectionInput
    strategy: SelectionStrategy


@dataclass(frozen=True)
class SelectionConfig:
    """Exactly one of ``n_samples`` / ``proportion_samples`` is set."""

    strategies: tuple[SelectionEntry, ...]
    n_samples: int | None = None
    proportion_samples: float | None = None

    def samples_for(self, n_candidates: int) -> int:
        """How many to pick from ``n_candidates`` not-yet-selected samples.

        ``proportion_samples`` rounds half up (0.25 of 10 -> 3) and asks for at least one
        sample whenever there is one, so a small pool never silently selects nothing.
        """
        if self.n_samples is not None:
            return self.n_samples
        if n_candidates <= 0:
            return 0
        return max(1, math.floor(self.proportion_samples * n_candidates + 0.5))

    def to_dict(self) -> dict[str, Any]:
        """The canonical LightlyOne-schema dict (snake_case, defaults filled in, our score
        names), suitable for recording a run: ``parse_selection_config(c.to_dict()) == c``."""
        out: dict[str, Any] = {}
        if self.n_samples is not None:
            out["n_samples"] = self.n_samples
        else:
            out["proportion_samples"] = self.proportion_samples
        out["strategies"] = [{"input": _record_dict(e.input), "strategy": _record_dict(e.strategy)}
                             for e in self.strategies]
        return out


def _record_dict(record) -> dict[str, Any]:
    out: dict[str, Any] = {"type": record.type.value}
    for name in record.__dataclass_fields__:
        if name == "type":
            continue
        value = getattr(record, name)
        if value is None or value == ():
            continue
        if isinstance(record, BalanceStrategy) and name == "target" and not value:
            continue
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


# ---- parsing ----------------------------------------------------------------------------


def parse_selection_config(data: Mapping[str, Any]) -> SelectionConfig:
    """Validate a LightlyOne selection config (e.g. from ``json.loads``) into records.

    Raises ``SelectionConfigError`` naming the first bad field's path.
    """
    top = _fields(data, "", {"n_samples", "proportion_samples", "strategies"})
    n = top.get("n_samples")
    p = top.get("proportion_samples")
    if (n is None) == (p is None):
        raise SelectionConfigError(
            "", "give exactly one of n_samples (an integer > 0) or proportion_samples (0 < p <= 1)")
    if n is not None:
        n = _int(n, "n_samples", minimum=1)
    else:
        p = _number(p, "proportion_samples")
        if not 0.0 < p <= 1.0:
            raise SelectionConfigError("proportion_samples", f"must be in (0, 1], got {p!r}")
    raw = top.get("strategies")
    if raw is None:
        raise SelectionConfigError("strategies", "is required (a non-empty list)")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise SelectionConfigError("strategies", f"must be a non-empty list, got {raw!r}")
    entries = tuple(_entry(item, f"strategies[{i}]") for i, item in enumerate(raw))
    return SelectionConfig(strategies=entries, n_samples=n, proportion_samples=p)


def _fields(obj: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    """``obj`` as a dict with canonical (snake_case) keys; unknown or doubled keys are errors."""
    if not isinstance(obj, Mapping):
        raise SelectionConfigError(path, f"must be an object, got {obj!r}")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        where = f"{path}.{key}" if path else str(key)
        name = _CAMEL.get(key, key)
        if name in _UNSUPPORTED and name not in allowed:
            raise SelectionConfigError(where, _UNSUPPORTED[name])
        if name not in allowed:
            raise SelectionConfigError(
                where, f"unknown field; allowed here: {', '.join(sorted(allowed))}")
        if name in out:
            raise SelectionConfigError(where, f"given twice (as {name} and its camelCase spelling)")
        out[name] = value
    return out


def _entry(item: Any, path: str) -> SelectionEntry:
    fields = _fields(item, path, {"input", "strategy"})
    for required in ("input", "strategy"):
        if required not in fields:
            raise SelectionConfigError(f"{path}.{required}", "is required")
    strategy = _strategy(fields["strategy"], f"{path}.strategy")
    inp = _input(fields["input"], f"{path}.input")
    _check_combination(inp, strategy, path)
    return SelectionEntry(input=inp, strategy=strategy)


def _type_of(obj: Any, path: str, enum: type[Enum], aliases: Mapping[str, str] = {}) -> Any:
    if not isinstance(obj, Mapping):
        raise SelectionConfigError(path, f"must be an object, got {obj!r}")
    if "type" not in obj:
        raise SelectionConfigError(f"{path}.type", f"is required; one of {_choices(enum)}")
    return _enum(aliases.get(obj["type"], obj["type"]) if isinstance(obj["type"], str) else obj["type"],
                 f"{path}.type", enum, shown=obj["type"])


_INPUT_FIELDS = {
    InputType.EMBEDDINGS: {"type", "tag_name", "dataset_id", "task"},
    InputType.SCORES: {"type", "score", "task"},
    InputType.PREDICTIONS: {"type", "name", "task", "categories", "dataset_id", "tag_name"},
    InputType.METADATA: {"type", "key"},
    InputType.RANDOM: {"type", "random_seed"},
}


def _input(obj: Any, path: str) -> SelectionInput:
    kind = _type_of(obj, path, InputType)
    f = _fields(obj, path, _INPUT_FIELDS[kind])
    text = {name: _text(f[name], f"{path}.{name}") for name in ("task", "dataset_id", "tag_name", "key")
            if name in f and f[name] is not None}
    if kind is InputType.EMBEDDINGS:
        return EmbeddingsInput(tag_name=text.get("tag_name"), dataset_id=text.get("dataset_id"),
                               task=text.get("task"))
    if kind is InputType.SCORES:
        if f.get("score") is None:
            raise SelectionConfigError(f"{path}.score", f"is required; one of {', '.join(EDGE_SCORES)}")
        score = _text(f["score"], f"{path}.score")
        score = _SCORE_ALIASES.get(score, score)
        if score not in EDGE_SCORES:
            raise SelectionConfigError(
                f"{path}.score", f"must be one of {', '.join(EDGE_SCORES)}, got {f['score']!r}")
        return ScoresInput(score=score, task=text.get("task"))
    if kind is InputType.PREDICTIONS:
        if f.get("name") is None:
            raise SelectionConfigError(f"{path}.name", f"is required; one of {_choices(PredictionsName)}")
        name = _enum(f["name"], f"{path}.name", PredictionsName)
        categories: tuple[str, ...] = ()
        if name is PredictionsName.CATEGORY_COUNT:
            raw = f.get("categories")
            if not isinstance(raw, (list, tuple)) or not raw:
                raise SelectionConfigError(f"{path}.categories",
                                           "CATEGORY_COUNT needs a non-empty list of class names")
            categories = tuple(_text(c, f"{path}.categories[{i}]") for i, c in enumerate(raw))
            if len(set(categories)) != len(categories):
                raise SelectionConfigError(f"{path}.categories", "must not repeat a class name")
        elif f.get("categories") is not None:
            raise SelectionConfigError(f"{path}.categories", "is only used with name CATEGORY_COUNT")
        return PredictionsInput(name=name, task=text.get("task"), categories=categories,
                                dataset_id=text.get("dataset_id"), tag_name=text.get("tag_name"))
    if kind is InputType.METADATA:
        if "key" not in text:
            raise SelectionConfigError(f"{path}.key", "is required (a metadata key, e.g. \"device_id\")")
        return MetadataInput(key=text["key"])
    seed = f.get("random_seed")
    return RandomInput(random_seed=0 if seed is None else _int(seed, f"{path}.random_seed", minimum=0))


_STRATEGY_FIELDS = {
    StrategyType.DIVERSITY: {"type", "strength", "stopping_condition_minimum_distance"},
    StrategyType.TYPICALITY: {"type", "strength", "num_nearest_neighbors",
                              "stopping_condition_minimum_typicality"},
    StrategyType.WEIGHTS: {"type", "strength", "stopping_condition_max_sum"},
    StrategyType.THRESHOLD: {"type", "threshold", "operation"},
    StrategyType.BALANCE: {"type", "strength", "target", "distribution"},
    StrategyType.SIMILARITY: {"type", "strength"},
}


def _strategy(obj: Any, path: str) -> SelectionStrategy:
    kind = _type_of(obj, path, StrategyType, _STRATEGY_ALIASES)
    f = _fields(obj, path, _STRATEGY_FIELDS[kind])
    strength = 1.0
    if f.get("strength") is not None:
        strength = _number(f["strength"], f"{path}.strength")
        if abs(strength) > MAX_ABS_STRENGTH:
            raise SelectionConfigError(f"{path}.strength", f"must be within +-1e9, got {strength!r}")

    def optional(name: str, low: float, high: float, low_open: bool = False) -> float | None:
        if f.get(name) is None:
            return None
        value = _number(f[name], f"{path}.{name}")
        if value < low or value > high or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise SelectionConfigError(f"{path}.{name}", f"must be in {bracket}{low:g}, {high:g}], got {value!r}")
        return value

    if kind is StrategyType.DIVERSITY:
        return DiversityStrategy(strength=strength, stopping_condition_minimum_distance=optional(
            "stopping_condition_minimum_distance", 0.0, 2.0))
    if kind is StrategyType.TYPICALITY:
        k = DEFAULT_NUM_NEAREST_NEIGHBORS
        if f.get("num_nearest_neighbors") is not None:
            k = _int(f["num_nearest_neighbors"], f"{path}.num_nearest_neighbors", minimum=2)
        return TypicalityStrategy(strength=strength, num_nearest_neighbors=k,
                                  stopping_condition_minimum_typicality=optional(
                                      "stopping_condition_minimum_typicality", 0.0, 1.0, low_open=True))
    if kind is StrategyType.WEIGHTS:
        return WeightsStrategy(strength=strength, stopping_condition_max_sum=optional(
            "stopping_condition_max_sum", 0.0, math.inf))
    if kind is StrategyType.THRESHOLD:
        for required in ("threshold", "operation"):
            if f.get(required) is None:
                raise SelectionConfigError(f"{path}.{required}", "is required for THRESHOLD")
        return ThresholdStrategy(threshold=_number(f["threshold"], f"{path}.threshold"),
                                 operation=_enum(f["operation"], f"{path}.operation", ThresholdOperation))
    if kind is StrategyType.BALANCE:
        return _balance(f, path, strength)
    return SimilarityStrategy(strength=strength)


def _balance(f: dict[str, Any], path: str, strength: float) -> BalanceStrategy:
    raw_target = f.get("target")
    target: dict[str, float] = {}
    if raw_target is not None:
        if not isinstance(raw_target, Mapping) or not raw_target:
            raise SelectionConfigError(f"{path}.target",
                                       f"must be a non-empty object of class -> fraction, got {raw_target!r}")
        for name, value in raw_target.items():
            where = f"{path}.target.{name}"
            fraction = _number(value, where)
            if not 0.0 <= fraction <= 1.0:
                raise SelectionConfigError(where, f"must be a fraction in [0, 1], got {value!r}")
            target[str(name)] = fraction
        total = math.fsum(target.values())
        if total > 1.0 + 1e-9:
            raise SelectionConfigError(f"{path}.target", f"fractions must sum to at most 1, got {total:g}")
    if f.get("distribution") is None:
        if not target:
            raise SelectionConfigError(
                path, f"BALANCE needs a target or a distribution ({_choices(BalanceDistribution)})")
        distribution = BalanceDistribution.TARGET
    else:
        distribution = _enum(f["distribution"], f"{path}.distribution", BalanceDistribution)
    if distribution is BalanceDistribution.TARGET and not target:
        raise SelectionConfigError(f"{path}.target", "is required when distribution is TARGET")
    if distribution is not BalanceDistribution.TARGET and target:
        raise SelectionConfigError(
            f"{path}.target", f"is only used with distribution TARGET, not {distribution.value}")
    return BalanceStrategy(distribution=distribution, target=MappingProxyType(target), strength=strength)


# Strategy -> the inputs it can read (LightlyOne's combination table).
_NUMERIC_INPUTS = (InputType.SCORES, InputType.METADATA, InputType.RANDOM, InputType.PREDICTIONS)
_ACCEPTS = {
    StrategyType.DIVERSITY: (InputType.EMBEDDINGS,),
    StrategyType.TYPICALITY: (InputType.EMBEDDINGS,),
    StrategyType.SIMILARITY: (InputType.EMBEDDINGS,),
    StrategyType.WEIGHTS: _NUMERIC_INPUTS,
    StrategyType.THRESHOLD: _NUMERIC_INPUTS,
    StrategyType.BALANCE: (InputType.METADATA, InputType.PREDICTIONS),
}


def _check_combination(inp: SelectionInput, strategy: SelectionStrategy, path: str) -> None:
    accepted = _ACCEPTS[strategy.type]
    if inp.type not in accepted:
        raise SelectionConfigError(
            f"{path}.input.type",
            f"{strategy.type.value} accepts input {' or '.join(t.value for t in accepted)}, got {inp.type.value!r}")
    if isinstance(inp, PredictionsInput):
        needed = (PredictionsName.CLASS_DISTRIBUTION if strategy.type is StrategyType.BALANCE
                  else PredictionsName.CATEGORY_COUNT)
        if inp.name is not needed:
            raise SelectionConfigError(
                f"{path}.input.name",
                f"{strategy.type.value} on PREDICTIONS needs name {needed.value}, got {inp.name.value!r}")
    if isinstance(inp, EmbeddingsInput):
        if strategy.type is StrategyType.SIMILARITY and inp.tag_name is None:
            raise SelectionConfigError(f"{path}.input.tag_name",
                                       "SIMILARITY needs the tag that holds the query samples")
        if strategy.type is not StrategyType.SIMILARITY and (inp.tag_name or inp.dataset_id):
            raise SelectionConfigError(
                f"{path}.input", f"tag_name/dataset_id name a SIMILARITY query set; "
                                 f"{strategy.type.value} always reads the pool's own embeddings")


# ---- scalar checks ----------------------------------------------------------------------


def _choices(enum: type[Enum]) -> str:
    return ", ".join(member.value for member in enum)


def _enum(value: Any, path: str, enum: type[Enum], shown: Any = None) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise SelectionConfigError(
            path, f"must be one of {_choices(enum)}, got {value if shown is None else shown!r}") from None


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SelectionConfigError(path, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SelectionConfigError(path, f"must be finite, got {value!r}")
    return float(value)


def _int(value: Any, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SelectionConfigError(path, f"must be an integer, got {value!r}")
    if value < minimum:
        raise SelectionConfigError(path, f"must be >= {minimum}, got {value!r}")
    return value


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SelectionConfigError(path, f"must be a non-empty string, got {value!r}")
    return value
