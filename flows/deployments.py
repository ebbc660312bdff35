"""The deployments of retrofresh's flows and their schedules, from code defaults or a prefect.yaml.

``infra/prefect/prefect.yaml`` is the deployment file for ``prefect deploy``; ``retrofresh flows
serve --config FILE`` reads the same format (its ``deployments`` list: name, entrypoint,
parameters, schedules, tags, description) and serves them from one process, no work pool needed.
Without ``--config`` it serves :data:`DEFAULT_DEPLOYMENTS`, which a test keeps equal to the file.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from flows.common.events import SOURCE_CHANGED

LOG = logging.getLogger(__name__)

SCHEDULE_KINDS = ("cron", "interval", "rrule")


class DeploymentConfigError(ValueError):
    """A deployment file that cannot be served as written; the message says where and why."""


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, with which parameters, on which schedules."""

    name: str
    entrypoint: str  # "flows.refresh:refresh_corpus" (module form works from any directory)
    schedules: tuple[dict, ...] = ()
    parameters: dict = field(default_factory=dict)
    description: str | None = None
    tags: tuple[str, ...] = ()
    triggers: tuple[dict, ...] = ()  # prefect.yaml `triggers` entries (event triggers that run it)


DEFAULT_DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec("refresh", "flows.refresh:refresh_corpus", ({"cron": "*/15 * * * *", "timezone": "UTC"},),
                   {"runner": "local"}, "Ingest, validate and publish a new index version.", ("retrofresh", "refresh")),
    DeploymentSpec("compact-nightly", "flows.compact:compact_index", ({"cron": "30 2 * * *", "timezone": "UTC"},),
                   {}, "Merge the current version's shards into one and publish it.", ("retrofresh", "maintenance")),
    DeploymentSpec("evaluate-daily", "flows.evaluate_freshness:evaluate_freshness", ({"cron": "0 6 * * *", "timezone": "UTC"},),
                   {}, "Does the published index retrieve the sample world's changed facts?", ("retrofresh", "evaluation")),
    DeploymentSpec("evaluate-temporal", "flows.evaluate_temporal:evaluate_temporal", (),
                   {}, "Frozen weights on dated documents: bits per byte with no, a stale and a fresh index (run on demand with docs and stale_version).",
                   ("retrofresh", "evaluation")),
    DeploymentSpec("gc-weekly", "flows.gc:gc_store", ({"cron": "0 3 * * 0", "timezone": "UTC"},),
                   {"keep": 10}, "Delete shards no longer used by the newest versions.", ("retrofresh", "maintenance")),
    DeploymentSpec("rollback", "flows.rollback:rollback_index", (),
                   {}, "Point CURRENT at an older version (run on demand with its version).", ("retrofresh", "maintenance")),
    DeploymentSpec("refresh-changed", "flows.refresh_changed:refresh_changed", (),
                   {}, "Fetch, embed and publish only the URLs a change event names.", ("retrofresh", "refresh"),
                   ({"type": "event", "enabled": True, "match": {"prefect.resource.id": "retrofresh.source.*"},
                     "expect": [SOURCE_CHANGED], "parameters": {"urls": "{{ event.payload.urls }}"}},)),
)


def _substitute_env(value: Any) -> Any:
    """Replace ``{{ $NAME }}`` placeholders with environment values, as ``prefect deploy`` does."""
    from prefect.utilities.templating import apply_values

    return apply_values(value, dict(os.environ), remove_notset=False)


def _check_schedule(where: str, schedule: Any) -> dict:
    if not isinstance(schedule, dict):
        raise DeploymentConfigError(f"{where}: a schedule must be a mapping, got {schedule!r}")
    kinds = [kind for kind in SCHEDULE_KINDS if schedule.get(kind) is not None]
    if len(kinds) != 1:
        raise DeploymentConfigError(f"{where}: a schedule needs exactly one of cron, interval, rrule; got {sorted(schedule)}")
    try:
        to_schedule(schedule)
    except (ValueError, TypeError) as error:
        raise DeploymentConfigError(f"{where}: invalid {kinds[0]} schedule {schedule[kinds[0]]!r}: {error}") from error
    return schedule


def to_trigger(config: dict):
    """A Prefect deployment trigger from one prefect.yaml ``triggers`` entry (type event, ...)."""
    from pydantic import TypeAdapter

    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes

    return TypeAdapter(DeploymentTriggerTypes).validate_python(config)


def _check_trigger(where: str, trigger: Any) -> dict:
    if not isinstance(trigger, dict):
        raise DeploymentConfigError(f"{where}: a trigger must be a mapping, got {trigger!r}")
    try:
        to_trigger(trigger)
    except ValueError as error:
        raise DeploymentConfigError(f"{where}: invalid trigger: {error}") from error
    return trigger


def parse_deployments(config: Any, *, source: str = "config") -> list[DeploymentSpec]:
    """Deployment specs from a parsed prefect.yaml document.

    Args:
        config: the YAML document (a mapping with a ``deployments`` list).
        source: names the file in error messages.

    Returns:
        One spec per deployment, in file order.

    Raises:
        DeploymentConfigError: the document is not a mapping, has no deployments, or one of them
            lacks a name or entrypoint, repeats a name, or has an unusable schedule.
    """
    if not isinstance(config, dict) or not isinstance(config.get("deployments"), list) or not config["deployments"]:
        raise DeploymentConfigError(f"{source}: expected a mapping with a non-empty 'deployments' list")
    config = _substitute_env(config)
    specs, names = [], set()
    for i, entry in enumerate(config["deployments"]):
        where = f"{source}: deployments[{i}]"
        if not isinstance(entry, dict):
            raise DeploymentConfigError(f"{where}: expected a mapping, got {entry!r}")
        name, entrypoint = entry.get("name"), entry.get("entrypoint")
        if not name or not isinstance(name, str):
            raise DeploymentConfigError(f"{where}: missing 'name'")
        if not entrypoint or ":" not in str(entrypoint):
            raise DeploymentConfigError(f"{where} ({name}): 'entrypoint' must look like module:flow or path.py:flow")
        if name in names:
            raise DeploymentConfigError(f"{where}: deployment name {name!r} appears twice")
        names.add(name)
        schedules = entry.get("schedules") or []
        if not isinstance(schedules, list):
            raise DeploymentConfigError(f"{where} ({name}): 'schedules' must be a list")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise DeploymentConfigError(f"{where} ({name}): 'parameters' must be a mapping")
        triggers = entry.get("triggers") or []
        if not isinstance(triggers, list):
            raise DeploymentConfigError(f"{where} ({name}): 'triggers' must be a list")
        for j, trigger in enumerate(triggers):
            _check_trigger(f"{where} ({name}) triggers[{j}]", trigger)
        specs.append(
            DeploymentSpec(
                name=name,
                entrypoint=str(entrypoint),
                schedules=tuple(_check_schedule(f"{where} ({name}) schedules[{j}]", s) for j, s in enumerate(schedules)),
                parameters=dict(parameters),
                description=entry.get("description"),
                tags=tuple(entry.get("tags") or ()),
                triggers=tuple(triggers),
            )
        )
    return specs


def load_deployments(path: str | Path | None = None) -> list[DeploymentSpec]:
    """Deployment specs from a prefect.yaml file, or the defaults when ``path`` is None.

    Raises:
        DeploymentConfigError: the file is missing, is not YAML, or describes bad deployments.
    """
    if path is None:
        return list(DEFAULT_DEPLOYMENTS)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise DeploymentConfigError(f"cannot read deployment file {path}: {error}") from error
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DeploymentConfigError(f"{path} is not valid YAML: {error}") from error
    return parse_deployments(config, source=str(path))


def to_schedule(config: dict):
    """A Prefect schedule from one prefect.yaml schedule entry (cron, interval seconds, or rrule)."""
    from prefect.schedules import Cron, Interval, RRule

    common = {"timezone": config.get("timezone"), "active": config.get("active", True), "parameters": config.get("parameters") or {}}
    if config.get("cron") is not None:
        return Cron(str(config["cron"]), day_or=config.get("day_or", True), slug=config.get("slug"), **common)
    if config.get("interval") is not None:
        interval = config["interval"]
        seconds = interval.total_seconds() if isinstance(interval, timedelta) else float(interval)
        if seconds <= 0:
            raise ValueError("interval must be positive seconds")
        return Interval(timedelta(seconds=seconds), slug=config.get("slug"), **common)
    return RRule(str(config["rrule"]), slug=config.get("slug"), **common)


def to_runner_deployments(specs: list[DeploymentSpec], overrides: dict[str, Any] | None = None) -> list:
    """Runner deployments ready for ``prefect.serve``.

    Args:
        specs: what to serve.
        overrides: parameters (e.g. ``store``, ``sources``) applied to every flow that accepts them.

    Raises:
        DeploymentConfigError: an entrypoint does not name a flow, or a parameter is unknown to it.
    """
    from prefect.flows import Flow, load_flow_from_entrypoint

    deployments = []
    for spec in specs:
        try:
            flow = load_flow_from_entrypoint(spec.entrypoint, use_placeholder_flow=False)
        except Exception as error:  # noqa: BLE001 - any import failure means the same thing here
            raise DeploymentConfigError(f"deployment {spec.name!r}: cannot load {spec.entrypoint}: {error}") from error
        if not isinstance(flow, Flow):
            raise DeploymentConfigError(f"deployment {spec.name!r}: {spec.entrypoint} is not a flow")
        accepted = set(inspect.signature(flow.fn).parameters)
        unknown = set(spec.parameters) - accepted
        if unknown:
            raise DeploymentConfigError(f"deployment {spec.name!r}: {flow.name} has no parameter(s) {sorted(unknown)}")
        parameters = dict(spec.parameters)
        parameters.update({k: v for k, v in (overrides or {}).items() if k in accepted and v is not None})
        deployments.append(
            flow.to_deployment(
                name=spec.name,
                schedules=[to_schedule(s) for s in spec.schedules],
                parameters=parameters,
                description=spec.description,
                tags=list(spec.tags),
                triggers=[to_trigger(t) for t in spec.triggers] or None,
            )
        )
    return deployments
