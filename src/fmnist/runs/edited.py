"""A stopped run's config.json, checked before `--resume` trusts it: a hand edit is one line saying what to do.

Resume trains on with config.json's options ("config") and what the run settled at its start
("resolved": the precision --amp auto chose, a time budget's plan), from the state in last.pt. So
config.json must still describe the run that last.pt continues, key by key: last.pt records the
options it was trained with and (from this version on) the resolved settings, and an edit that
differs from them is refused with the value to put back. Without last.pt (stopped before its first
epoch ended) the run starts again, and config.json must still be a valid, complete config of this
version. The records that the run's end reads (the report's re-run section: options_given, command,
rerun; resume appends to resumes) must have their types; other top-level keys are the details a
sweep or a search added, and are kept as they are.

Nothing here changes a file: every refusal leaves the run folder as it was.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from fmnist.arguments import argument
from fmnist.errors import CheckpointError, ConfigError
from fmnist.training.budget import TimePlan
from fmnist.training.config import CONDITIONAL, FIELDS, TrainConfig

# Options that may differ on resume: they say where the run happens, not what it computes.
MAY_CHANGE_ON_RESUME = ("device", "data_dir")
# What fmnist writes into every run's config.json, and what an empty value of it is.
REQUIRED_RECORDS = {"data": "the data set it trained on", "environment": "the versions and machine it started on",
                    "options_given": "the options given explicitly"}
# Records read later in the run (the report, the next resume), with the type they must have.
RECORD_TYPES = {"data": dict, "environment": dict, "options_given": dict, "command": list, "rerun": str,
                "resumes": list, "processes": int}
JSON_TYPE_NAMES = {dict: "table", list: "list", str: "string", int: "whole number"}
RESOLVED_KEYS = ("amp", "time_plan")
RESOLVED_OPTIONAL_KEYS = ("amp_reason",)  # why --amp auto chose its precision; runs before it have none
RESOLVED_AMP = ("none", "bf16", "fp16")  # --amp auto is resolved to one of these when a run starts


def shown(value) -> str:
    """A value as config.json spells it (null, true, "adamw"), so that the user can type it back."""
    return json.dumps(value)


def refused(path: Path, problem: str, todo: str) -> CheckpointError:
    """The one line: which key of config.json is wrong and how, then what to do ("config.json's x ...")."""
    joint = "" if problem.startswith("'") else " "
    return CheckpointError(f"{argument('run_dir', path, 'resume')}: config.json{joint}{problem}; {todo}")


def same_json(value, wanted) -> bool:
    """Equal as JSON values: 1 and 1.0 are the same number, but true is not 1."""
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted
    return value == wanted


def checked_config(path: Path, saved: dict, last_state: dict | None) -> TrainConfig:
    """The run's config from config.json (`saved`), once every key is checked against `last_state`
    (last.pt, None when there is none); CheckpointError naming the first edited key otherwise."""
    check_records(path, saved)
    config = checked_options(path, saved["config"], last_state)
    check_seed(path, saved, config)
    check_resolved(path, saved, config, last_state)
    return config


def check_records(path: Path, saved: dict) -> None:
    """The records fmnist always writes are there, and those read later have their types."""
    for name, meaning in REQUIRED_RECORDS.items():
        if name not in saved:
            raise refused(path, f"has no {name} ({meaning})", f'put it back (an empty "{name}": {{}} will do), '
                          "or start a new run")
    for name, kind in RECORD_TYPES.items():
        value = saved.get(name)
        if name not in saved or isinstance(value, kind) and not isinstance(value, bool):
            continue
        raise refused(path, f"says {name} = {short(value)}, not a {JSON_TYPE_NAMES[kind]}",
                      f"put back what fmnist wrote (an empty {shown(kind())} will do), or start a new run")
    if not all(isinstance(part, str) for part in saved.get("command", [])):
        raise refused(path, "says command is a list with something other than strings",
                      'put back the command as a list of strings (an empty "command": [] will do), or start a new run')
    if not all(isinstance(entry, dict) for entry in saved.get("resumes", [])):
        raise refused(path, "says resumes holds something other than tables (one per resume)",
                      'put back what fmnist wrote (an empty "resumes": [] will do), or start a new run')


def short(value) -> str:
    text = shown(value)
    return text if len(text) <= 80 else text[:77] + "..."


def checked_options(path: Path, options: dict, last_state: dict | None) -> TrainConfig:
    """config.json's "config": a valid config (types, ranges), then key by key what last.pt was trained
    with (without last.pt: what this version would write for that config)."""
    recorded = last_state["config"] if last_state is not None else None
    try:
        config = TrainConfig.from_saved(options)
    except ConfigError as error:
        key = error.field
        if recorded is not None and key in recorded:
            todo = f"put back {shown(recorded[key])}, what last.pt was trained with, or start a new run"
        else:
            todo = "restore config.json, or start a new run"
        where = f"'s config.{key}" if key else ""
        raise refused(path, f"{where} is not valid ({error})", todo) from None
    as_read = config.to_dict()  # what resume would train with
    expected = recorded if recorded is not None else as_read
    for key in [*expected, *(name for name in options if name not in expected)]:
        if key in MAY_CHANGE_ON_RESUME:  # may differ from last.pt's, but must say what resume uses
            check_option(path, key, options, as_read, from_checkpoint=False)
        else:
            check_option(path, key, options, expected, from_checkpoint=recorded is not None)
    return config


def check_option(path: Path, key: str, options: dict, expected: dict, from_checkpoint: bool) -> None:
    """One option of config.json against what the run was trained with (or would be started with)."""
    source = "last.pt was trained with" if from_checkpoint else "this run would start with"
    if key not in expected:
        close = difflib.get_close_matches(str(key), FIELDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise refused(path, f"has an option config.{key} that this run does not have{hint}",
                      "remove it, or start a new run")
    if key not in options:
        raise refused(path, f"has no config.{key}", f"put back \"{key}\": {shown(expected[key])}, what {source}, "
                      "or start a new run")
    value, wanted = options[key], expected[key]
    if same_json(value, wanted):
        return
    if wanted is None and key in CONDITIONAL and not from_checkpoint:
        raise refused(path, f"says config.{key} = {short(value)}, which these settings ignore "
                      f"({CONDITIONAL[key][1]})", "set it back to null, or start a new run")
    raise refused(path, f"says config.{key} = {short(value)} but {source} {shown(wanted)}",
                  f"put back {shown(wanted)}, or start a new run")


def check_seed(path: Path, saved: dict, config: TrainConfig) -> None:
    """The top-level seed repeats config.seed for people reading the file; an edit there changes nothing,
    so it is refused rather than silently ignored."""
    seed = saved.get("seed")
    if "seed" not in saved:
        raise refused(path, "has no seed", f'put back "seed": {config.seed} (config.seed), or start a new run')
    if seed != config.seed or isinstance(seed, bool):
        another = f" with --seed {seed}" if isinstance(seed, int) and not isinstance(seed, bool) else ""
        raise refused(path, f"says seed = {short(seed)} but config.seed = {config.seed}, and a resumed run keeps "
                      "its seed", f"put back {config.seed}, or start a new run{another}")


def check_resolved(path: Path, saved: dict, config: TrainConfig, last_state: dict | None) -> None:
    """config.json's "resolved": the precision and time plan the run started with, as last.pt records them."""
    recorded = last_state.get("resolved") if last_state is not None else None
    if "resolved" not in saved:
        if recorded is not None:
            raise refused(path, "has no resolved (the precision and time plan the run started with)",
                          f'put back "resolved": {shown(recorded)}, what last.pt recorded, or start a new run')
        if config.time_budget is not None:
            raise refused(path, f"has no resolved.time_plan, the plan of --time-budget {config.time_budget}",
                          "restore config.json, or start a new run (it measures a new plan)")
        return  # a run of an older fmnist, before last.pt: resolved when it starts again
    resolved = saved["resolved"]
    if recorded is not None:  # exactly what last.pt recorded: name the first key that differs, and its value
        if not same_tree(resolved, recorded):
            key, value, wanted = first_difference(resolved, recorded, "resolved")
            if wanted is MISSING:
                raise refused(path, f"has {key}, which last.pt does not have", "remove it, or start a new run")
            problem = f"has no {key}" if value is MISSING else f"says {key} = {short(value)}"
            raise refused(path, f"{problem} but last.pt was trained with {short(wanted)}",
                          f"put back {shown(wanted)}, or start a new run")
        return
    todo = "restore config.json, or start a new run"
    if not isinstance(resolved, dict) or not set(RESOLVED_KEYS) <= set(resolved) <= {*RESOLVED_KEYS,
                                                                                      *RESOLVED_OPTIONAL_KEYS}:
        raise refused(path, f"says resolved = {short(resolved)}, not a table of {' and '.join(RESOLVED_KEYS)} "
                      f"(and {', '.join(RESOLVED_OPTIONAL_KEYS)})", todo)
    if not isinstance(resolved.get("amp_reason", ""), str):
        raise refused(path, f"says resolved.amp_reason = {short(resolved['amp_reason'])}, which should be text", todo)
    check_resolved_values(path, resolved, config, todo)


def check_resolved_values(path: Path, resolved: dict, config: TrainConfig, todo: str) -> None:
    amp = resolved["amp"]
    if amp not in RESOLVED_AMP or (config.amp != "auto" and amp != config.amp):
        rule = f"one of {', '.join(RESOLVED_AMP)}" if config.amp == "auto" else f"{config.amp}, as config.amp says"
        raise refused(path, f"says resolved.amp = {short(amp)}, which should be {rule}", todo)
    plan = resolved["time_plan"]
    if config.time_budget is None:
        if plan is not None:
            raise refused(path, "has a resolved.time_plan but no config.time_budget (the run trains for "
                          f"config.epochs = {config.epochs})", todo)
        return
    try:
        time_plan = TimePlan.from_dict(plan)
    except ConfigError as error:
        raise refused(path, f"'s resolved.{error.field} is not valid ({error})", todo) from None
    if time_plan.budget != config.time_budget:
        raise refused(path, f"says resolved.time_plan.budget = {shown(time_plan.budget)} but config.time_budget = "
                      f"{shown(config.time_budget)}", todo)


MISSING = object()  # a key one side of a comparison does not have


def same_tree(value, wanted) -> bool:
    if isinstance(value, dict) and isinstance(wanted, dict):
        return value.keys() == wanted.keys() and all(same_tree(value[name], wanted[name]) for name in wanted)
    return same_json(value, wanted)


def first_difference(value, wanted, key: str) -> tuple[str, object, object]:
    """The first key (dotted) where two JSON values differ, with both values there (MISSING: no such key)."""
    if isinstance(value, dict) and isinstance(wanted, dict):
        for name in [*wanted, *(name for name in value if name not in wanted)]:
            if not same_tree(value.get(name, MISSING), wanted.get(name, MISSING)):
                return first_difference(value.get(name, MISSING), wanted.get(name, MISSING), f"{key}.{name}")
    return key, value, wanted
