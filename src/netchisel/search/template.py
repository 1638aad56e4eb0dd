"""Recipe templates: a recipe with `$placeholders`, filled from one candidate of a space.

Placeholders: `$x` is the value of dimension `x`; `$candidate` is the whole candidate dict;
`$g` for a group is `{rest: value}` over the dimensions named `g/rest` (policy spaces name
theirs `sparsity/<layer>` or `bits/<layer>`). As a mapping key (`{$candidate: merge, width:
16}`) a placeholder's mapping is merged into that mapping; the fixed keys win. A mapping
entry or list item whose placeholder names a dimension that is inactive for this candidate
(its `when` does not hold) is left out, so the builder's default applies.

Kept apart from the spec parser because the policy spaces read templates too (a policy needs
the template's model fixed, i.e. free of placeholders), and the spec builds policy spaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netchisel.core.errors import ConfigError
from netchisel.search.space import Candidate, Space

__all__ = ["check_placeholders", "fill", "placeholders"]

_DROP = object()  # an entry whose placeholder names an inactive dimension: left out


def fill(template: Any, candidate: Candidate, space: Space) -> Any:
    """The template with every `$placeholder` replaced by the candidate's value.

    Example:
        >>> from netchisel.search.space import categorical
        >>> s = Space({"op": categorical("conv", "skip"), "k": categorical(3, when={"op": "conv"})})
        >>> fill({"kwargs": {"op": "$op", "k": "$k"}}, {"op": "skip"}, s)
        {'kwargs': {'op': 'skip'}}
    """
    if isinstance(template, str) and template.startswith("$"):
        name = template[1:]
        if name == "candidate":
            return dict(candidate)
        if name in candidate:
            return candidate[name]
        group = {k[len(name) + 1 :]: v for k, v in candidate.items() if k.startswith(name + "/")}
        if group:
            return group
        return _DROP
    if isinstance(template, Mapping):
        merged: dict[str, Any] = {}
        for key in template:
            if isinstance(key, str) and key.startswith("$"):  # {$candidate: merge, stem: 32}
                part = fill(key, candidate, space)
                merged.update(part if isinstance(part, Mapping) else {})
        out = {
            k: fill(v, candidate, space)
            for k, v in template.items()
            if not (isinstance(k, str) and k.startswith("$"))
        }
        merged.update({k: v for k, v in out.items() if v is not _DROP})
        return merged
    if isinstance(template, list):
        items = [fill(v, candidate, space) for v in template]
        return [v for v in items if v is not _DROP]
    return template


def placeholders(template: Any) -> set[str]:
    """Every `$name` the template uses.

    Example:
        >>> sorted(placeholders({"model": {"kwargs": {"width": "$width"}}, "$candidate": 1}))
        ['candidate', 'width']
    """
    if isinstance(template, str) and template.startswith("$"):
        return {template[1:]}
    if isinstance(template, Mapping):
        keys = {k[1:] for k in template if isinstance(k, str) and k.startswith("$")}
        return keys.union(*(placeholders(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template))
    return set()


def check_placeholders(template: Mapping[str, Any], space: Space) -> None:
    """Refuse a placeholder that names no dimension, and a dimension the template never uses.

    Example:
        >>> from netchisel.search.space import categorical
        >>> check_placeholders({"lr": "$lr"}, Space({"lr": categorical(0.1, 0.01)}))
        >>> check_placeholders({"lr": "$lr"}, Space({"k": categorical(8)}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: search.recipe: placeholder $lr is not a dimension ...
    """
    used = placeholders(template)
    names = set(space.dimensions)
    groups = {n.split("/", 1)[0] for n in names if "/" in n}
    for name in sorted(used):
        if name != "candidate" and name not in names and name not in groups:
            raise ConfigError(
                f"search.recipe: placeholder ${name} is not a dimension of the space "
                f"(dimensions: {', '.join(sorted(names))})"
            )
    if "candidate" in used:
        return
    for name in space.dimensions:
        if name not in used and name.split("/", 1)[0] not in used:
            raise ConfigError(
                f"search.space.{name}: the recipe never uses it; add ${name} to the recipe"
            )
