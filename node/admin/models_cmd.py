"""``pacs-ai-node models``: the versioned model repository and its audit trail.

Every change (add, promote, rollback, shadow, remove, load, unload) is appended to the model's
``history.jsonl`` with who made it (the OS user, or ``--by``) and when; ``models history`` shows
it. The logic lives in :mod:`node.models`; this module only parses and prints.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from node.admin.common import ConfigOption, fail, settings_or_exit
from node.config import Settings
from node.errors import NodeError
from node.models.admin import ModelsAdmin
from node.models.audit import current_user, read_history
from node.models.card import card_template
from node.models.repository import ModelRepository
from node.routing.rules import RuleSet, load_rules

__all__ = ["app"]

app = typer.Typer(
    help="The model repository: versions, cards, promotion, shadow, audit trail.",
    no_args_is_help=True,
)

ByOption = Annotated[
    str | None,
    typer.Option("--by", help="Who makes the change, for the audit trail (default: the OS user)."),
]


def _split(reference: str, *, need_version: bool) -> tuple[str, str | None]:
    name, _, version = reference.partition("@")
    if not name or (need_version and not version):
        raise fail(f"write NAME@VERSION, e.g. lung_seg@2 (got {reference!r})")
    return name, version or None


def _context(config: Path | None) -> tuple[Settings, ModelRepository, RuleSet]:
    settings = settings_or_exit(config)
    repository = ModelRepository(settings.model_repository)
    try:
        rules = load_rules(settings.rules_file) if settings.rules_file.is_file() else RuleSet()
    except NodeError as exc:
        raise fail(exc) from exc
    return settings, repository, rules


def _admin(config: Path | None, by: str | None) -> ModelsAdmin:
    _settings, repository, rules = _context(config)
    return ModelsAdmin(repository, by=by or current_user(), rules=rules)


@app.command("list")
def list_(config: ConfigOption = None) -> None:
    """List the models: their versions, the promoted one and the shadow."""
    _settings, repository, _rules = _context(config)
    models = repository.models()
    if not models:
        typer.echo(f"no models in {repository.root}")
        return
    typer.echo(f"{'MODEL':<20} {'VERSIONS':<16} {'PROMOTED':<9} SHADOW")
    try:
        for model in models:
            state = repository.state(model)
            versions = ",".join(repository.versions(model)) or "-"
            typer.echo(
                f"{model:<20} {versions:<16} {state.promoted or '-':<9} {state.shadow or '-'}"
            )
    except NodeError as exc:
        raise fail(exc) from exc


@app.command("show")
def show(
    reference: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default: promoted).")],
    config: ConfigOption = None,
) -> None:
    """Show a model version's card: task, intended use, input contract, outputs, metrics."""
    _settings, repository, rules = _context(config)
    model, version = _split(reference, need_version=False)
    try:
        version = repository.resolve(model, version)
        card = repository.card(model, version)
        state = repository.state(model)
    except NodeError as exc:
        raise fail(exc) from exc
    roles = [r for r, v in (("promoted", state.promoted), ("shadow", state.shadow)) if v == version]
    pinned = ModelsAdmin(repository, by="", rules=rules).pins(model)
    roles += [f"pinned by rule {p.rule}" for p in pinned if p.version == version]
    contract = card.input
    typer.echo(f"{card.name}@{card.version}" + (f" ({', '.join(roles)})" if roles else ""))
    typer.echo(f"  task         {card.task} (pipeline {card.pipeline})")
    typer.echo(f"  summary      {card.summary}")
    typer.echo(f"  {card.clinical_use.upper()}")
    typer.echo(f"  intended use {card.intended_use}")
    for item in card.not_intended_for:
        typer.echo(f"  not for      {item}")
    typer.echo(f"  modality     {'/'.join(contract.modalities)}, {contract.orientation}")
    typer.echo(f"  body part    {'/'.join(contract.body_parts) or 'any'}")
    typer.echo(f"  slices       {contract.slices.describe()}")
    for label, value, unit in (
        ("thickness", contract.slice_thickness_mm, "mm"),
        ("spacing", contract.slice_spacing_mm, "mm"),
        ("pixel", contract.pixel_spacing_mm, "mm"),
        ("matrix", contract.matrix, "px"),
        ("fov", contract.field_of_view_mm, "mm"),
    ):
        if value is not None:
            typer.echo(f"  {label:<12} {value.describe(unit)}")
    if contract.intensity is not None:
        bands = ", ".join(b.name for b in contract.intensity.bands)
        typer.echo(f"  intensity    {contract.intensity.units}" + (f" ({bands})" if bands else ""))
    for output in card.outputs:
        typer.echo(
            f"  output       {output.label} = {output.name} "
            f"({output.property_type.scheme} {output.property_type.value})"
        )
    for data in card.training_data:
        typer.echo(f"  trained on   {data.name} ({data.role}; {data.licence})")
    expert = "expert" if card.labels.expert_annotation else "no expert annotation"
    typer.echo(f"  labels       {expert}: {card.labels.provenance}")
    for metric in card.metrics:
        typer.echo(f"  metric       {metric.name} {metric.value:.4f} on {metric.dataset}")


@app.command("card-template")
def card_template_(
    model: Annotated[str, typer.Argument(help="The model the card is for.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write it here (refuses to overwrite) instead of stdout."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print a model card to fill in (every '<fill in ...>' must go before `models add`)."""
    _settings, repository, _rules = _context(config)
    versions = repository.versions(model)
    version = str(int(versions[-1]) + 1 if versions else 1)
    pipeline = "lung_seg"
    if versions:
        with contextlib.suppress(NodeError):  # a broken card still gets a template
            pipeline = repository.card(model, repository.resolve(model, None)).pipeline
    text = card_template(model, version, pipeline=pipeline)
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.exists():
        raise fail(f"{out} exists; choose another --out")
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}: fill it in, then `pacs-ai-node models add PATH --card {out}`")


@app.command("add")
def add(
    path: Annotated[
        Path,
        typer.Argument(
            help="A version folder (network.json + model.pt + card.yaml, as the training "
            "script writes it) or a TorchScript file.",
            exists=True,
        ),
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="The model to add a version to.")],
    card: Annotated[
        Path | None,
        typer.Option(
            help="The model card (default: card.yaml in the folder).", exists=True, dir_okay=False
        ),
    ] = None,
    write_card_template: Annotated[
        Path | None,
        typer.Option(help="No card yet: write a template here to fill in, and stop."),
    ] = None,
    config: ConfigOption = None,
    by: ByOption = None,
) -> None:
    """Import a new version of a model (the next number) with its card; it is not promoted."""
    if write_card_template is not None:
        card_template_(model, out=write_card_template, config=config)
        return
    settings, repository, rules = _context(config)
    admin = ModelsAdmin(repository, by=by or current_user(), rules=rules)
    try:
        version = admin.add(path, model=model, card=card)
    except NodeError as exc:
        raise fail(exc) from exc
    typer.echo(
        f"added {model}@{version}; `pacs-ai-node models promote {model}@{version}` to use it"
    )
    if settings.inference.backend == "triton":
        typer.echo(
            f"Triton loads every version of a model at once: `pacs-ai-node models load {model}` "
            "now, and check that it loads, before jobs need it"
        )


@app.command("promote")
def promote(
    reference: Annotated[str, typer.Argument(help="NAME@VERSION to promote.")],
    config: ConfigOption = None,
    by: ByOption = None,
) -> None:
    """Make NAME@VERSION the version rules that do not pin one get (new jobs from now on)."""
    model, version = _split(reference, need_version=True)
    assert version is not None
    try:
        before = _admin(config, by).promote(model, version)
    except NodeError as exc:
        raise fail(exc) from exc
    typer.echo(f"promoted {model}@{version} (was {before or 'none'})")


@app.command("rollback")
def rollback(
    model: Annotated[str, typer.Argument(help="The model to roll back.")],
    config: ConfigOption = None,
    by: ByOption = None,
) -> None:
    """Promote again the version that was promoted before the current one."""
    try:
        back = _admin(config, by).rollback(model)
    except NodeError as exc:
        raise fail(exc) from exc
    typer.echo(f"rolled {model} back to {model}@{back}")


@app.command("shadow")
def shadow(
    reference: Annotated[str, typer.Argument(help="NAME@VERSION to run as the shadow, or NAME.")],
    off: Annotated[bool, typer.Option("--off", help="Stop the model's shadow.")] = False,
    config: ConfigOption = None,
    by: ByOption = None,
) -> None:
    """Run a version beside the promoted one on every job; compared, never exported."""
    model, version = _split(reference, need_version=not off)
    try:
        _admin(config, by).set_shadow(model, None if off else version)
    except NodeError as exc:
        raise fail(exc) from exc
    typer.echo(f"{model}: shadow off" if off else f"{model}: shadow {model}@{version}")


@app.command("remove")
def remove(
    reference: Annotated[str, typer.Argument(help="NAME@VERSION to delete.")],
    config: ConfigOption = None,
    by: ByOption = None,
) -> None:
    """Delete a version; refused while it is promoted, the shadow, or pinned by a rule."""
    model, version = _split(reference, need_version=True)
    assert version is not None
    try:
        _admin(config, by).remove(model, version)
    except NodeError as exc:
        raise fail(exc) from exc
    typer.echo(f"removed {model}@{version}")


@app.command("history")
def history(
    model: Annotated[str, typer.Argument(help="The model.")],
    config: ConfigOption = None,
) -> None:
    """Show the model's audit trail: when, who, what."""
    _settings, repository, _rules = _context(config)
    entries = read_history(repository.root, model)
    if not entries:
        typer.echo(f"no recorded changes to {model}")
        return
    for entry in entries:
        target = f"{entry.model}@{entry.version}" if entry.version else entry.model
        detail = f" ({entry.detail})" if entry.detail else ""
        typer.echo(f"{entry.at}  {entry.by:<12} {entry.action:<9} {target}{detail}")


def _triton(config: Path | None, by: str | None, model: str, action: str) -> None:
    settings, repository, rules = _context(config)
    if settings.inference.backend != "triton":
        raise fail("inference.backend is not triton: the embedded backend loads models itself")
    if model not in repository.models():
        raise fail(f"no model {model!r} in {repository.root}")
    from node.backends.triton import TritonBackend

    inference = settings.inference
    backend = TritonBackend(
        inference.triton_url, protocol=inference.triton_protocol, timeout_s=inference.timeout_s
    )
    try:
        backend.load(model) if action == "load" else backend.unload(model)
    except NodeError as exc:
        raise fail(exc) from exc
    finally:
        backend.close()
    admin = ModelsAdmin(repository, by=by or current_user(), rules=rules)
    admin.record(model, action, detail=f"on Triton at {inference.triton_url}")
    typer.echo(f"{action}ed {model} on Triton at {inference.triton_url}")


@app.command("load")
def load(
    model: Annotated[str, typer.Argument(help="The model to load on Triton.")],
    config: ConfigOption = None,
    by: ByOption = None,
) -> None:
    """Load (or reload, e.g. after `add`) a model on Triton (inference.backend: triton)."""
    _triton(config, by, model, "load")


@app.command("unload")
def unload(
    model: Annotated[str, typer.Argument(help="The model to unload from Triton.")],
    config: ConfigOption = None,
    by: ByOption = None,
) -> None:
    """Unload a model from Triton (the next job that needs it loads it again)."""
    _triton(config, by, model, "unload")
