"""Dynamic batching: group jobs that can share one session call, run it, split the outputs.

Jobs are grouped when they ask for the same model version and the same outputs, and their
inputs agree on everything but the first (batch) dimension, which every input and output of
the model must leave dynamic. A group never holds more than ``max_batch`` samples (samples,
not jobs: a job may carry a batch of its own). A job is never split: one that alone carries
``max_batch`` samples or more runs alone, as sent. If a batched call fails, each of its jobs
runs again on its own, so one bad job fails alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Outputs = dict[str, np.ndarray]


@dataclass
class Item:
    """One validated job ready to run: its decoded inputs and requested outputs."""

    key: Any  # the caller's handle on the job
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None

    @property
    def samples(self) -> int:
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1

    def signature(self) -> tuple[Any, ...]:
        return (
            tuple(self.outputs) if self.outputs is not None else None,
            tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in self.inputs.items())),
        )


def batchable(input_shapes: Sequence[Sequence[int]], output_shapes: Sequence[Sequence[int]]) -> bool:
    """True when every input and output has a dynamic first dimension."""
    return all(len(s) >= 1 and s[0] == -1 for s in (*input_shapes, *output_shapes))


def plan(items: Sequence[Item], max_batch: int) -> list[list[Item]]:
    """Groups of compatible items with at most ``max_batch`` samples each (order kept)."""
    groups: list[list[Item]] = []
    open_groups: dict[tuple[Any, ...], tuple[list[Item], int]] = {}
    for item in items:
        n = item.samples
        if n >= max_batch or n == 0:
            groups.append([item])
            continue
        sig = item.signature()
        current = open_groups.get(sig)
        if current is not None and current[1] + n <= max_batch:
            current[0].append(item)
            open_groups[sig] = (current[0], current[1] + n)
        else:
            group = [item]
            groups.append(group)
            open_groups[sig] = (group, n)
    return groups


RunFn = Callable[[dict[str, np.ndarray], list[str] | None], Outputs]


def run_one(run: RunFn, item: Item) -> Outputs:
    return run(item.inputs, item.outputs)


def run_group(run: RunFn, group: list[Item]) -> list[Outputs | BaseException]:
    """Outputs (or the exception) of each item of a group, in order."""
    if len(group) == 1:
        try:
            return [run_one(run, group[0])]
        except Exception as exc:
            return [exc]
    counts = [it.samples for it in group]
    total = sum(counts)
    try:
        merged = {name: np.concatenate([it.inputs[name] for it in group]) for name in group[0].inputs}
        out = run(merged, group[0].outputs)
        if any(v.ndim == 0 or v.shape[0] != total for v in out.values()):
            raise ValueError("a batched output does not have the batch size as first dimension")
        bounds = np.cumsum([0, *counts])
        return [{k: v[bounds[i] : bounds[i + 1]] for k, v in out.items()} for i in range(len(group))]
    except Exception:
        # One bad job must fail alone: run each on its own.
        results: list[Outputs | BaseException] = []
        for it in group:
            try:
                results.append(run_one(run, it))
            except Exception as exc:
                results.append(exc)
        return results
