"""What a run does, decided by one pure function over values (DESIGN section 5): no gpg, disk or network.

- publish: a new index and pointer, at a sequence above every one this publisher committed;
- resign: the same index, the pointer signed again with a new expiry (it expires within `resign_before`);
- finish: the same pointer; put back what the publication names but the destination lacks (listings of
  a run that died after its pointer, objects deleted or altered since);
- refresh: the same pointer; metalinks and pages again, because a mirror's status changed;
- noop: nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pipeline.errors import PipelineError
from pipeline.index import MAX_SEQUENCE, parse_rfc3339
from pipeline.model import Pointer

Action = Literal["publish", "resign", "finish", "refresh", "noop"]


@dataclass(frozen=True)
class Facts:
    """Everything the action depends on, as values the run has read or computed."""

    current_sequence: int | None  # of the destination's verified pointer; None: nothing published yet
    highest_sequence: int = 0  # the highest this publisher committed (its state), 0 when unknown
    resign_due: bool = False  # the current pointer expires within `resign_before`
    complete: bool = True  # the completion marker names the current pointer (its listings were written)
    mirrors_changed: bool = False  # the mirrors' status differs from what the publication shows
    lost_index: bool = False  # an object of the current index is missing from the destination, or altered
    lost_objects: bool = False  # a torrent, metalink, page or key the publication names is missing or altered
    # whether the current index holds exactly what this run builds (records, webseeds, trackers);
    # None: not known yet (the state cache could not vouch for it; compare the records first)
    unchanged: bool | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    sequence: int


def decide(facts: Facts) -> Decision | None:
    """The run's action and the pointer's sequence, or None when `facts.unchanged` must be known first."""
    current = facts.current_sequence
    if current is not None and not 1 <= current <= MAX_SEQUENCE:
        raise PipelineError(
            f"latest.asc: sequence {current} is outside 1..2^53-1; clients reject it: "
            "rotate the signing key and reset the destination"
        )
    if current is None or current < facts.highest_sequence or facts.lost_index:
        # nothing published, a pointer older than one this publisher committed (rolled back: clients that
        # saw the newer one reject it), or an index object lost: only a new sequence is whole again
        return _publish(max(current or 0, facts.highest_sequence))
    if facts.unchanged is None:
        return None
    if not facts.unchanged:
        return _publish(max(current, facts.highest_sequence))
    if facts.resign_due:
        return Decision("resign", current)
    if not facts.complete or facts.lost_objects:
        return Decision("finish", current)
    if facts.mirrors_changed:
        return Decision("refresh", current)
    return Decision("noop", current)


def _publish(above: int) -> Decision:
    if above >= MAX_SEQUENCE:
        raise PipelineError(
            f"latest.asc: sequence {above} cannot grow past 2^53-1: rotate the signing key and reset the destination"
        )
    return Decision("publish", above + 1)


def same_content(
    *,
    current_fingerprints: Mapping[str, int],
    current_webseeds: Sequence[str],
    current_trackers: Sequence[str],
    fingerprints: Mapping[str, int],
    webseeds: Sequence[str],
    trackers: Sequence[str],
) -> bool:
    """Whether the current index lists what this run builds: records compare by their fingerprints (by
    value, `description` and order aside); webseeds and trackers compare as sets."""
    return (
        current_fingerprints == fingerprints
        and set(current_webseeds) == set(webseeds)
        and set(current_trackers) == set(trackers)
    )


def resign_due(pointer: Pointer, now: datetime, resign_before: timedelta) -> bool:
    """Whether `pointer` expires within `resign_before` of `now` (then a run re-signs it)."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    try:
        expires = parse_rfc3339(pointer.expires)
    except ValueError as err:
        raise PipelineError(f"latest.asc: expires {err}") from err
    return expires - now <= resign_before
