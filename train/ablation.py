"""Ablations: one training config over variants x seeds, the same data and step budget for each.

A variant is a set of ``key=value`` overrides (``model.encoder.mask=multi``, ``model.encoder.combine=add``);
axes given as ``key=v1,v2,...`` expand to their product. A variant with ``model.encoder.mask=none`` ignores
every mask setting, so its combinations collapse into one run, "vanilla" (one per setting of the axes that
are not mask settings, e.g. "vanilla,depth=2"): each LAM variant is compared with the vanilla variant that
shares its other settings, which is added when no axis yields it. A seed sets ``run.seed``: model
initialisation, dropout and data order; the shards are the same for every run.

Each run is a real ``lamflow train`` (under torchrun with ``nproc`` processes) in
``OUT/runs/<variant>/seed-<s>``; a run whose final validation record exists is reused, an interrupted one
continues from its checkpoints (the trainer resumes a run directory it finds), so re-running the same
ablation only does what is missing. The scores are the final validation record of each run.

The summary holds, per variant and metric, the mean and standard deviation over seeds, and per variant the
paired per-seed difference to the baseline with a bootstrap 95% interval (seeds resampled with
replacement). With three seeds such an interval is wide: it says how little three seeds can decide.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lamflow.errors import ConfigError, LamflowError
from lamflow.lam.config import MASK_FIELDS
from lamflow.train.config import load_config
from lamflow.train.run_log import read_metrics

MASK_KEY = "model.encoder.mask"
BASELINE = "vanilla"
# Fields of a validation record that are not scores.
NOT_SCORES = ("step", "split", "items")
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]
    baseline: str  # the vanilla variant it is compared with (its own name for a vanilla variant)


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``model.encoder.mask=none,multi`` -> (``model.encoder.mask``, [``none``, ``multi``])."""
    key, sep, values = text.partition("=")
    choices = [value.strip() for value in values.split(",") if value.strip()]
    if not sep or not key.strip() or not choices:
        raise ConfigError(f"--vary {text!r} must look like section.field=value1,value2, e.g. {MASK_KEY}=none,multi")
    return key.strip(), choices


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _is_mask_setting(key: str) -> bool:
    return key == MASK_KEY or (key.startswith("model.encoder.") and _short(key) in MASK_FIELDS)


def _variant(mask_part: dict[str, str], rest: dict[str, str]) -> Variant:
    """The variant of these settings; the baseline shares ``rest`` with mask=none (plain attention)."""
    vanilla = mask_part.get(MASK_KEY) == "none"
    if vanilla:  # plain attention: the mask's settings mean nothing
        mask_part = {MASK_KEY: "none"}
    rest_name = [f"{_short(key)}={value}" for key, value in rest.items()]
    name = ",".join([BASELINE] + rest_name if vanilla else [f"{_short(k)}={v}" for k, v in mask_part.items()] + rest_name)
    baseline = ",".join([BASELINE] + rest_name)
    return Variant(name, tuple(f"{key}={value}" for key, value in {**mask_part, **rest}.items()), baseline)


def expand_variants(axes: Sequence[tuple[str, Sequence[str]]]) -> list[Variant]:
    """The product of ``axes`` as variants: combinations with mask=none collapse into one vanilla variant per
    setting of the other (non-mask) axes, and every variant's vanilla baseline is present."""
    variants: dict[str, Variant] = {}
    keys = [key for key, _ in axes]
    for values in itertools.product(*(choices for _, choices in axes)):
        setting = dict(zip(keys, values))
        mask_part = {k: v for k, v in setting.items() if _is_mask_setting(k)}
        rest = {k: v for k, v in setting.items() if not _is_mask_setting(k)}
        for variant in (_variant(mask_part, rest), _variant({MASK_KEY: "none"}, rest)):
            variants.setdefault(variant.name, variant)
    return sorted(variants.values(), key=lambda v: (v.baseline, v.name != v.baseline, v.name))


@dataclass(frozen=True)
class Ablation:
    """What to run: a config (path or shipped name) plus overrides shared by every run."""

    config: str
    overrides: tuple[str, ...]
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    out: Path
    nproc: int = 1

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.out / "runs" / variant.name.replace("/", "_") / f"seed-{seed}"

    def run_overrides(self, variant: Variant, seed: int) -> list[str]:
        return [*self.overrides, *variant.overrides, f"run.seed={seed}", f"run.out_dir={self.run_dir(variant, seed)}"]

    def validate(self) -> int:
        """Check every run's config before anything trains; returns the step budget (the same for all)."""
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.nproc < 1:
            raise ConfigError(f"nproc must be >= 1, got {self.nproc}")
        budgets = set()
        for variant in self.variants:
            config = load_config(self.config, self.run_overrides(variant, self.seeds[0]))
            if not config.data.val_shards:
                raise ConfigError("an ablation scores each run on the validation split: set data.val_shards")
            budgets.add(config.optim.max_steps)
        if len(budgets) != 1:
            raise ConfigError(f"the variants train for different numbers of steps {sorted(budgets)}: vary other fields")
        return budgets.pop()


def final_scores(run_dir: Path, max_steps: int) -> dict[str, float] | None:
    """The scores of the run's final validation record, or None while the run is unfinished."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    finals = [r for r in read_metrics(path) if r.get("split") == "val" and r.get("step") == max_steps]
    if not finals:
        return None
    return {name: float(value) for name, value in finals[-1].items()
            if name not in NOT_SCORES and isinstance(value, (int, float)) and not isinstance(value, bool)}


def train_command(ablation: Ablation, variant: Variant, seed: int) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ablation.nproc}"]
                if ablation.nproc > 1 else [sys.executable])
    return [*launcher, "-m", "lamflow", "train", ablation.config, *ablation.run_overrides(variant, seed)]


def run_ablation(ablation: Ablation, say: Callable[[str], None] = print) -> dict[str, dict[int, dict[str, float]]]:
    """Train every (variant, seed) that has no final scores yet; returns {variant: {seed: scores}}."""
    max_steps = ablation.validate()
    results: dict[str, dict[int, dict[str, float]]] = {}
    total = len(ablation.variants) * len(ablation.seeds)
    for number, (variant, seed) in enumerate(itertools.product(ablation.variants, ablation.seeds), start=1):
        run_dir = ablation.run_dir(variant, seed)
        scores = final_scores(run_dir, max_steps)
        if scores is None:
            say(f"[{number}/{total}] training {variant.name}, seed {seed} -> {run_dir}")
            env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
            finished = subprocess.run(train_command(ablation, variant, seed), env=env)
            if finished.returncode:
                raise LamflowError(f"training {variant.name} (seed {seed}) failed with exit {finished.returncode}; "
                                   f"its log is above and its run directory {run_dir}; re-run to resume")
            scores = final_scores(run_dir, max_steps)
            if scores is None:
                raise LamflowError(f"{run_dir} finished without a validation record at step {max_steps}")
        else:
            say(f"[{number}/{total}] reusing {variant.name}, seed {seed} ({run_dir})")
        results.setdefault(variant.name, {})[seed] = scores
    return results


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    data = np.asarray(values, dtype=np.float64)
    means = np.random.default_rng(seed).choice(data, size=(resamples, len(data)), replace=True).mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarize(results: dict[str, dict[int, dict[str, float]]], variants: Sequence[Variant]) -> dict[str, Any]:
    """Per variant and metric: mean, sd (ddof 1; None for one seed) and per-seed values; per non-vanilla
    variant and metric: the paired differences to its vanilla baseline (seeds both ran) with their mean and
    bootstrap 95% interval."""
    summary: dict[str, Any] = {"baselines": {v.name: v.baseline for v in variants}, "variants": {}, "differences": {}}
    for variant in variants:
        by_seed = results.get(variant.name, {})
        # In the order the scores list them (a metric a run could not compute, e.g. None for an empty bucket,
        # counts for no seed).
        metrics = list(dict.fromkeys(metric for scores in by_seed.values() for metric in scores))
        summary["variants"][variant.name] = {}
        for metric in metrics:
            values = [by_seed[seed][metric] for seed in sorted(by_seed) if by_seed[seed].get(metric) is not None]
            summary["variants"][variant.name][metric] = {
                "mean": float(np.mean(values)) if values else None,
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None, "n": len(values), "values": values,
            }
        baseline = results.get(variant.baseline, {})
        if variant.name == variant.baseline or not baseline:
            continue
        summary["differences"][variant.name] = {}
        for metric in metrics:
            seeds = [s for s in sorted(by_seed)
                     if by_seed[s].get(metric) is not None and baseline.get(s, {}).get(metric) is not None]
            if not seeds:
                continue
            diffs = [by_seed[s][metric] - baseline[s][metric] for s in seeds]
            low, high = bootstrap_interval(diffs)
            summary["differences"][variant.name][metric] = {"mean": float(np.mean(diffs)), "low": low, "high": high,
                                                            "n": len(diffs), "values": diffs}
    return summary
