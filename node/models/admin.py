"""Changes to the model repository: add, promote, rollback, shadow, remove; each one audited.

These are what ``pacs-ai-node models`` calls. Each checks first, changes the repository with
atomic steps (a staged folder renamed into place, ``versions.yaml`` replaced atomically), then
appends to the model's audit trail (:mod:`node.models.audit`). A running node picks the change up
at its next job: jobs resolve the promoted version when they are created.

What ``add`` imports (PATH):

- a version folder as the training script writes it: ``network.json`` + ``model.pt`` (a MONAI
  ``state_dict``), with ``card.yaml`` (and ``metrics.json``, ``MODEL_CARD.md``) beside them;
- a TorchScript file (``torch.jit.save``; a zip archive) or an ONNX file, given a card with
  ``--card``; its tensors are the model's (``network.json`` of its promoted version);
- a MONAI bundle folder (``configs/metadata.json``, ``models/model.ts``, ``model.onnx`` or
  ``model.pt`` with a ``network_def`` of an architecture the node builds): its
  ``network_data_format`` must match the model's tensors; the card is ``--card`` or the
  bundle's ``docs/card.yaml``; its ``configs/`` are kept in the version's ``bundle/``.

The new version gets the next number; its card's ``name`` and ``version`` are set to it. Before
it is moved into place, the staged version runs once on zeros of the declared input shape through
the embedded backend: weights that do not load or answer with the wrong shape are refused.
"""

from __future__ import annotations

import json
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from node.backends.embedded import FORMATS, TORCHSCRIPT_FILE, EmbeddedBackend
from node.backends.torch import ARCHITECTURES, NETWORK_FILE
from node.errors import ConfigError, NodeError
from node.models.audit import append
from node.models.card import CARD_FILE, METRICS_FILE, ModelCard, load_card, parse_card
from node.models.repository import VERSIONS_FILE, ModelRepository
from node.routing.rules import RuleSet

__all__ = ["ModelAdminError", "ModelsAdmin", "Pin"]

#: Files copied from an imported version folder (anything else is left behind).
_VERSION_FILES = (
    NETWORK_FILE,
    "model.pt",
    TORCHSCRIPT_FILE,
    CARD_FILE,
    METRICS_FILE,
    "MODEL_CARD.md",
    "model.py",
)
#: What marks a MONAI bundle folder.
BUNDLE_METADATA = Path("configs") / "metadata.json"
#: Triton's Python-backend entry point of a version folder.
TRITON_MODEL_FILE = "model.py"


class ModelAdminError(NodeError):
    """A model change was refused; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Pin:
    """A rule that refers to a model version: as its version or as its shadow."""

    rule: str
    version: str
    as_shadow: bool


class ModelsAdmin:
    """Audited changes to one model repository.

    Parameters
    ----------
    repository
        The repository to change.
    by
        Who makes the changes (recorded in the audit trail).
    rules
        The node's rules: versions they pin cannot be removed.
    """

    def __init__(self, repository: ModelRepository, *, by: str, rules: RuleSet | None = None):
        self.repository = repository
        self.by = by
        self.rules = rules or RuleSet()

    # -- questions ---------------------------------------------------------------------------

    def pins(self, model: str) -> list[Pin]:
        """The rules that pin a version of ``model`` (or name it as their shadow)."""
        found = []
        for rule in self.rules.rules:
            if rule.model != model:
                continue
            if not rule.follows_promoted and rule.version is not None:
                found.append(Pin(rule.name, rule.version, as_shadow=False))
            if rule.shadow not in (None, "none", "promoted"):
                found.append(Pin(rule.name, str(rule.shadow), as_shadow=True))
        return found

    # -- changes -----------------------------------------------------------------------------

    def add(self, source: Path, *, model: str, card: Path | None = None) -> str:
        """Import ``source`` as the next version of ``model``; return the new version.

        Raises
        ------
        ModelAdminError
            If the model does not exist, ``source`` is not a version folder or a TorchScript
            file, no card is given, or the staged version does not run.
        ModelCardError
            If the card is invalid (naming the file and field).
        """
        root = self.repository.root
        if model not in self.repository.models():
            raise ModelAdminError(
                f"no model {model!r} in {root} (a new model needs its config.pbtxt and a "
                "pipeline first; `models list` shows the models)"
            )
        versions = self.repository.versions(model)
        version = str(int(versions[-1]) + 1 if versions else 1)
        card_path = card or next(
            (c for c in (source / CARD_FILE, source / "docs" / CARD_FILE) if c.is_file()), None
        )
        if card_path is None or not card_path.is_file():
            raise ModelAdminError(
                f"no model card for {source}: write one from `pacs-ai-node models card-template "
                f"{model}` and pass it with --card"
            )
        parsed = _card_for(card_path, model, version)
        if parsed.pipeline != self._pipeline_of(model):
            raise ModelAdminError(
                f"{card_path}: pipeline {parsed.pipeline!r} differs from the model's "
                f"({self._pipeline_of(model)!r})"
            )
        staging = root / model / f".staging-{uuid.uuid4().hex}"
        try:
            kind = self._stage(source, staging, model)
            header = f"# Imported by `pacs-ai-node models add` from {source.name}.\n"
            (staging / CARD_FILE).write_text(header + parsed.to_yaml(), encoding="utf-8")
            if (card_path.parent / METRICS_FILE).is_file() and card_path.parent != source:
                shutil.copy2(card_path.parent / METRICS_FILE, staging / METRICS_FILE)
            load_card(staging / CARD_FILE)  # metrics against metrics.json, as the node will
            _smoke_test(root, model, staging.name)
            if not (root / model / VERSIONS_FILE).is_file():
                # Without versions.yaml the highest version is promoted: write down the one
                # promoted now, so that adding a version never promotes it.
                self.repository.save_state(model, self.repository.state(model))
            staging.rename(root / model / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        append(root, model, "add", by=self.by, version=version, detail=f"{kind} {source.name}")
        return version

    def promote(self, model: str, version: str) -> str | None:
        """Make ``version`` the one unpinned rules get; return the previously promoted one."""
        self._require(model, version)
        self.repository.card(model, version)
        state = self.repository.state(model)
        before = state.promoted
        if before == version:
            raise ModelAdminError(f"{model}@{version} is already promoted")
        previous = [*state.previous, before] if before is not None else list(state.previous)
        shadow = None if state.shadow == version else state.shadow
        self.repository.save_state(
            model,
            state.model_copy(update={"promoted": version, "previous": previous, "shadow": shadow}),
        )
        append(
            self.repository.root,
            model,
            "promote",
            by=self.by,
            version=version,
            detail=f"was {before}",
        )
        return before

    def rollback(self, model: str) -> str:
        """Promote again the version promoted before the current one; return it."""
        state = self.repository.state(model)
        previous = [v for v in state.previous if self.repository.has(model, v)]
        if not previous:
            raise ModelAdminError(f"{model} has no earlier promoted version to roll back to")
        back = previous.pop()
        self.repository.save_state(
            model, state.model_copy(update={"promoted": back, "previous": previous})
        )
        append(
            self.repository.root,
            model,
            "rollback",
            by=self.by,
            version=back,
            detail=f"was {state.promoted}",
        )
        return back

    def set_shadow(self, model: str, version: str | None) -> None:
        """Run ``version`` beside the promoted one on every job of ``model`` (None: stop)."""
        state = self.repository.state(model)
        if version is not None:
            self._require(model, version)
            self.repository.card(model, version)
            if version == state.promoted:
                raise ModelAdminError(f"{model}@{version} is the promoted version, not a shadow")
        self.repository.save_state(model, state.model_copy(update={"shadow": version}))
        append(
            self.repository.root,
            model,
            "shadow",
            by=self.by,
            version=version,
            detail="shadow off" if version is None else "shadow on",
        )

    def remove(self, model: str, version: str) -> None:
        """Delete ``version`` of ``model``, unless something still uses it.

        Raises
        ------
        ModelAdminError
            If it is promoted, the shadow, pinned by a rule, or the model's only version.
        """
        self._require(model, version)
        state = self.repository.state(model)
        pins = [p for p in self.pins(model) if p.version == version]
        if pins:
            names = ", ".join(f"{p.rule}{' (shadow)' if p.as_shadow else ''}" for p in pins)
            raise ModelAdminError(f"{model}@{version} is pinned by rule(s) {names}")
        if version == state.promoted:
            raise ModelAdminError(
                f"{model}@{version} is promoted: promote another version or roll back first"
            )
        if version == state.shadow:
            raise ModelAdminError(f"{model}@{version} is the shadow: `models shadow --off` first")
        if self.repository.versions(model) == [version]:
            raise ModelAdminError(f"{model}@{version} is the model's only version")
        folder = self.repository.version_dir(model, version)
        trash = folder.with_name(f".removed-{version}-{uuid.uuid4().hex}")
        folder.rename(trash)  # atomic: Triton and the node never see half a version
        shutil.rmtree(trash, ignore_errors=True)
        if version in state.previous:
            kept = [v for v in state.previous if v != version]
            self.repository.save_state(model, state.model_copy(update={"previous": kept}))
        append(self.repository.root, model, "remove", by=self.by, version=version)

    def record(self, model: str, action: str, detail: str = "") -> None:
        """Audit an action taken elsewhere (Triton load/unload)."""
        append(self.repository.root, model, action, by=self.by, detail=detail)

    # -- helpers -----------------------------------------------------------------------------

    def _require(self, model: str, version: str) -> None:
        if not self.repository.has(model, version):
            known = ", ".join(self.repository.versions(model)) or "none"
            raise ModelAdminError(f"{model} has no version {version!r} (versions: {known})")

    def _pipeline_of(self, model: str) -> str:
        promoted = self.repository.resolve(model, None)
        return self.repository.card(model, promoted).pipeline

    def _stage(self, source: Path, staging: Path, model: str) -> str:
        """Copy ``source`` into ``staging`` as a version folder; return what kind it was."""
        staging.mkdir(parents=True)
        promoted_dir = self.repository.version_dir(model, self.repository.resolve(model, None))
        declared = json.loads((promoted_dir / NETWORK_FILE).read_text(encoding="utf-8"))
        tensors = {"inputs": declared["inputs"], "outputs": declared["outputs"]}
        if source.is_dir() and (source / BUNDLE_METADATA).is_file():
            kind = "MONAI bundle"
            _stage_bundle(source, staging, tensors)
        elif source.is_dir():
            kind = "version folder"
            if not (source / NETWORK_FILE).is_file():
                raise ModelAdminError(
                    f"{source}: neither a version folder ({NETWORK_FILE}) nor a MONAI bundle "
                    f"({BUNDLE_METADATA})"
                )
            for name in _VERSION_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, staging / name)
        elif source.is_file():
            fmt = "torchscript" if zipfile.is_zipfile(source) else "onnx"
            kind = "TorchScript file" if fmt == "torchscript" else "ONNX file"
            shutil.copy2(source, staging / FORMATS[fmt])
            _write_network(staging, {"format": fmt, **tensors})
        else:
            raise ModelAdminError(f"{source} does not exist")
        fmt = json.loads((staging / NETWORK_FILE).read_text(encoding="utf-8")).get(
            "format", "monai-state-dict"
        )
        if fmt not in FORMATS or not (staging / FORMATS[fmt]).is_file():
            raise ModelAdminError(f"{source}: format {fmt!r} needs {FORMATS.get(fmt, '?')}")
        if (
            not (staging / TRITON_MODEL_FILE).is_file()
            and (promoted_dir / TRITON_MODEL_FILE).is_file()
        ):
            # Triton's Python backend runs <version>/model.py: the promoted version's serves
            # every format (see model_repository/lung_seg/1/model.py).
            shutil.copy2(promoted_dir / TRITON_MODEL_FILE, staging / TRITON_MODEL_FILE)
        return kind


def _write_network(folder: Path, description: dict[str, Any]) -> None:
    (folder / NETWORK_FILE).write_text(json.dumps(description, indent=2) + "\n", "utf-8")


def _stage_bundle(bundle: Path, staging: Path, tensors: dict[str, Any]) -> None:
    """A MONAI bundle as a version folder: checked against the model's tensors, converted."""
    try:
        metadata = json.loads((bundle / BUNDLE_METADATA).read_text(encoding="utf-8"))
        data_format = metadata["network_data_format"]
        (bundle_in,) = data_format["inputs"].values()
        (bundle_out,) = data_format["outputs"].values()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelAdminError(
            f"{bundle / BUNDLE_METADATA}: no single-input, single-output network_data_format "
            f"({exc!r})"
        ) from exc
    for side, spec, declared in (
        ("input", bundle_in, tensors["inputs"][0]),
        ("output", bundle_out, tensors["outputs"][0]),
    ):
        dims = [int(spec.get("num_channels", 0)), *(int(d) for d in spec.get("spatial_shape", []))]
        if dims != [int(d) for d in declared["dims"]]:
            raise ModelAdminError(
                f"{bundle / BUNDLE_METADATA}: {side} is {dims} (channels, spatial shape); the "
                f"model's {declared['name']!r} is {declared['dims']}"
            )
    models = bundle / "models"
    if (models / TORCHSCRIPT_FILE).is_file():
        shutil.copy2(models / TORCHSCRIPT_FILE, staging / TORCHSCRIPT_FILE)
        _write_network(staging, {"format": "torchscript", **tensors})
    elif (models / FORMATS["onnx"]).is_file():
        shutil.copy2(models / FORMATS["onnx"], staging / FORMATS["onnx"])
        _write_network(staging, {"format": "onnx", **tensors})
    elif (models / "model.pt").is_file():
        _write_network(staging, {**_bundle_network(bundle), **tensors})
        shutil.copy2(models / "model.pt", staging / "model.pt")
    else:
        raise ModelAdminError(f"{models}: no model.ts, model.onnx or model.pt")
    shutil.copytree(bundle / "configs", staging / "bundle" / "configs")


def _bundle_network(bundle: Path) -> dict[str, Any]:
    """``network.json`` of a bundle's ``network_def``: only architectures the node builds, with
    literal arguments (no ``$`` expressions or ``@`` references are evaluated)."""
    path = bundle / "configs" / "inference.json"
    try:
        definition = dict(json.loads(path.read_text(encoding="utf-8"))["network_def"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelAdminError(f"{path}: no network_def ({exc!r})") from exc
    target = str(definition.pop("_target_", ""))
    architecture = target if target.startswith("monai.") else f"monai.networks.nets.{target}"
    if architecture not in ARCHITECTURES:
        raise ModelAdminError(
            f"{path}: network_def {target!r} is not one the node builds "
            f"({', '.join(sorted(ARCHITECTURES))}); export the bundle's model.ts instead"
        )
    if any(isinstance(v, str) and v[:1] in ("$", "@", "%") for v in definition.values()):
        raise ModelAdminError(f"{path}: network_def arguments must be literal values")
    return {"architecture": architecture, "kwargs": definition}


def _card_for(path: Path, model: str, version: str) -> ModelCard:
    """The card at ``path`` with its name and version set to where it is imported."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelAdminError(f"{path}: cannot read the card ({exc})") from exc
    if isinstance(data, dict):
        data = {**data, "name": model, "version": version}
    return parse_card(data, path=path)


def _smoke_test(root: Path, model: str, staged: str) -> None:
    """Run the staged version once on zeros of its declared input shape."""
    folder = root / model / staged
    description = json.loads((folder / NETWORK_FILE).read_text(encoding="utf-8"))
    (spec,) = description["inputs"]
    (out,) = description["outputs"]
    zeros = np.zeros((1, *(max(int(d), 1) for d in spec["dims"])), dtype=np.float32)
    try:
        outputs = EmbeddedBackend(root).infer(model, staged, {str(spec["name"]): zeros})
    except (NodeError, ConfigError) as exc:
        raise ModelAdminError(f"the new version does not run: {exc}") from exc
    got = outputs.get(str(out["name"]))
    expected = (1, *(int(d) for d in out["dims"]))
    if (
        got is None
        or any(e not in (-1, g) for e, g in zip(expected, got.shape, strict=False))
        or (got.ndim != len(expected))
    ):
        shape = None if got is None else tuple(got.shape)
        raise ModelAdminError(
            f"the new version answers {out['name']!r} with shape {shape}, expected {expected}"
        )
