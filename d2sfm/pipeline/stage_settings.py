"""What each finished stage was run with, kept in the run's record: a rerun with other settings redoes the first
changed stage and every stage after it, instead of returning results that no longer match the command. One copy of
this flow for every pipeline (reconstruct, localize aachen / inloc / images)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

log = logging.getLogger("d2sfm")


def digest(data: str | bytes) -> str:
    """A settings record's fingerprint of a list or a file's content (SHA-256, hex)."""
    return hashlib.sha256(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data).hexdigest()


def pairs_digest(pairs: Sequence[tuple[str, str]]) -> str:
    """The fingerprint of a pair list, in its order (the order decides nothing, but a list is written as given)."""
    return digest("\n".join(f"{a} {b}" for a, b in pairs))


def first_changed_stage(recorded: dict, current: dict, order: Sequence[str],
                        implicit: dict[str, dict] | None = None) -> str | None:
    """The first stage of ``order`` whose recorded settings differ from this run's, logged with what changed. A
    stage with no record (an earlier release wrote none) is compared with ``implicit``: what that release ran it
    with, key by key; with nothing known it counts as unchanged."""
    for stage in order:
        before = recorded.get(stage)
        now = json.loads(json.dumps(current.get(stage, {})))  # as the record will hold it (tuples as lists)
        if before is None and implicit and stage in implicit:
            before = json.loads(json.dumps(implicit[stage]))
            now = {key: now.get(key) for key in before}
        if before is not None and before != now:
            changes = ", ".join(f"{key} {before.get(key)!r} -> {now.get(key)!r}"
                                for key in dict.fromkeys([*now, *before]) if before.get(key) != now.get(key))
            log.info(f"  settings changed since the last run ({stage}: {changes}); redoing {stage} and what follows")
            return stage
    return None


PENDING = "stage_settings_pending"  # the record's list of stages still to redo, kept until each has run


class StageSettings:
    """The settings record of a run folder's state (key ``stage_settings``): ``redo`` names the stages whose
    outputs are stale; ``finished(stage)`` records this run's settings once the stage's output is current. The
    stages to redo are kept in the record too (``stage_settings_pending``) until each has finished: a run killed
    after an earlier stage recorded its new settings must not find the later stages' old outputs current."""

    def __init__(self, state: dict, current: dict[str, dict], order: Sequence[str],
                 implicit: dict[str, dict] | None = None) -> None:
        # implicit settings describe a folder an earlier release wrote (a record without settings), not a new one
        earlier_release = bool(state) and "stage_settings" not in state
        self.recorded: dict = dict(state.get("stage_settings") or {})
        state["stage_settings"] = self.recorded
        self.current = current
        self.changed = first_changed_stage(self.recorded, current, order, implicit if earlier_release else None)
        pending = [stage for stage in state.get(PENDING) or [] if stage in order]
        self.redo = set(order[order.index(self.changed):] if self.changed else ()) | set(pending)
        self.pending = [stage for stage in order if stage in self.redo]
        state[PENDING] = self.pending

    def finished(self, stage: str) -> None:
        """The stage's output is current: it ran with these settings, or it was done and nothing it depends on
        changed (a stage an earlier release ran gets this run's settings as its record)."""
        self.recorded[stage] = json.loads(json.dumps(self.current[stage]))
        if stage in self.pending:
            self.pending.remove(stage)

    def own_settings_changed(self, stage: str) -> bool:
        """Whether ``stage``'s own settings differ from those its output was made with (not merely a stage before it
        changed): its whole output is stale then, not only what the earlier stage's change touches."""
        before = self.recorded.get(stage)
        return stage == self.changed or (before is not None and stage in self.redo
                                         and before != json.loads(json.dumps(self.current[stage])))
