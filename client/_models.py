"""Model listing, I/O-free: the published models' signatures (``ModelInfo``, ``TensorSpec``), read
from ``icow:models`` and ``icow:model:<m>`` (docs/PROTOCOL.md §6), and the plans of
``client.models()`` and ``client.model(name)`` that the shells carry out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from icow import keys
from icow.client._ops import Command, Pipeline, Steps
from icow.codec import unpackb
from icow.errors import NotFound


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, Open Inference Protocol datatype, shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """A published model version and its signature."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    versions: tuple[int, ...] = field(default=())
    providers: tuple[str, ...] = field(default=())

    @staticmethod
    def from_wire(meta: Mapping[str, Any], versions: Sequence[int] = ()) -> ModelInfo:
        def specs(items: Any) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"])) for t in items
            )

        return ModelInfo(
            name=str(meta["name"]),
            version=int(meta["version"]),
            inputs=specs(meta["inputs"]),
            outputs=specs(meta["outputs"]),
            versions=tuple(sorted(versions)),
            providers=tuple(meta.get("providers", ())),
        )


def model_info(name: str, raw: Mapping[Any, Any], version: int | None) -> ModelInfo:
    if not raw:
        raise NotFound(f"model {name!r} is not published by any worker")
    metas = {int(k): unpackb(v) for k, v in raw.items()}
    chosen = max(metas) if version is None else version
    if chosen not in metas:
        raise NotFound(f"model {name!r} has no version {version}; published: {sorted(metas)}")
    return ModelInfo.from_wire(metas[chosen], versions=list(metas))


def models_of(names: Sequence[Any], versions: Sequence[Any]) -> dict[str, list[int]]:
    return {text(n): sorted(int(v) for v in vs) for n, vs in zip(names, versions) if vs}


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def listing() -> Steps:
    """``client.models()``: every published model and its versions, in two round trips."""
    names = sorted((yield Command("smembers", (keys.MODELS,))))
    versions = yield Pipeline(tuple(Command("hkeys", (keys.model(text(n)),)) for n in names))
    return models_of(names, versions)


def reading(name: str, version: int | None) -> Steps:
    """``client.model(name, version)``: a model's signature (its latest version by default)."""
    keys.check_model_name(name)
    return model_info(name, (yield Command("hgetall", (keys.model(name),))), version)
