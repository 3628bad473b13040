"""The context a template is rendered against at publish time.

It is the facts catalog's ``sample_context()`` plus a stand-in for every clinic attribute the
template uses (``patient.attributes.<key>``): attributes are free-form per clinic, so the sample
cannot know them, and a template must not fail to publish because of that. Nor can it know
whether an attribute is a text, a number or a list: the stand-in acts as each in turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from careflow.workflow.facts import ATTRIBUTE_PREFIXES, sample_context


class AttributeSample(str):
    """Stands in for a clinic attribute at publish time; every filter accepts it.

    Its text is the attribute's key, so the rendered sample reads sensibly; the date filters treat
    it as the sample appointment time and ``number`` as a four-digit amount. As a list, a for loop
    goes over no item (the loop body is still checked statically), while an item read by index
    (``patient.attributes.visits[0]``) is the stand-in again, whose keys are stand-ins too.
    """

    when = datetime(2026, 3, 14, 1, 30, tzinfo=timezone.utc)
    amount = 1234

    # Compared with a number ({% if patient.attributes.points > 100 %}) it acts as ``amount``:
    # text and numbers do not compare in Python, and the real value may well be a number.
    def _key(self, other: Any) -> tuple[Any, Any]:
        return (str(self), other) if isinstance(other, str) else (self.amount, other)

    def __lt__(self, other: Any) -> bool:
        mine, theirs = self._key(other)
        return mine < theirs

    def __le__(self, other: Any) -> bool:
        mine, theirs = self._key(other)
        return mine <= theirs

    def __gt__(self, other: Any) -> bool:
        mine, theirs = self._key(other)
        return mine > theirs

    def __ge__(self, other: Any) -> bool:
        mine, theirs = self._key(other)
        return mine >= theirs


def publish_context(fact_paths: Iterable[str], loop_paths: Iterable[str] = ()) -> dict[str, Any]:
    """``sample_context()`` with a stand-in for each attribute path the template uses or loops over."""
    context = sample_context()
    paths = {p for p in (*fact_paths, *loop_paths) if p.startswith(ATTRIBUTE_PREFIXES)}
    # Longest paths first, so "attributes.a.b" makes "a" a mapping before "attributes.a" is seen.
    for path in sorted(paths, key=lambda p: (-p.count("."), p)):
        node: Any = context
        *parents, leaf = path.split(".")
        for part in parents:
            if not isinstance(node, dict):
                break
            node = node.setdefault(part, {})
        else:
            if isinstance(node, dict) and leaf not in node:
                node[leaf] = AttributeSample(leaf)
    return context
