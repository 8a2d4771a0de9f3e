"""Referring expressions over a scene: generation and resolution.

An expression follows one small grammar::

    the [size] <colour> <shape> [<relation> the [size] <colour> <shape>]

`describe` produces, for one target object, expressions that are true of it and
of no other object in the scene; `resolve` parses an expression and returns
every object it fits, which is how the tests prove uniqueness from the text
alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vggt_deploy.data.vocabulary import COLOURS, RELATIONS, SHAPES, SIZES


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its words and its pixel box (x, y, w, h)."""

    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """Whether `a <relation> b` holds: boxes must be fully separated on that axis."""
    ax, ay, aw, ah = a.box
    bx, by, bw, bh = b.box
    if relation == "left of":
        return ax + aw <= bx
    if relation == "right of":
        return ax >= bx + bw
    if relation == "above":
        return ay + ah <= by
    if relation == "below":
        return ay >= by + bh
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def _phrase(obj: SceneObject, with_size: bool) -> str:
    return f"the {obj.size} {obj.name}" if with_size else f"the {obj.name}"


def _parse_phrase(words: list[str]) -> tuple[str | None, str, str]:
    """Parse "the [size] colour shape" into (size or None, colour, shape)."""
    if len(words) not in (3, 4) or words[0] != "the":
        raise ValueError(f"cannot parse noun phrase {' '.join(words)!r}")
    size = words[1] if len(words) == 4 else None
    colour, shape = words[-2], words[-1]
    if (size is not None and size not in SIZES) or colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown word in noun phrase {' '.join(words)!r}")
    return size, colour, shape


def _fits(obj: SceneObject, phrase: tuple[str | None, str, str]) -> bool:
    size, colour, shape = phrase
    return obj.colour == colour and obj.shape == shape and (size is None or obj.size == size)


def resolve(expression: str, objects: list[SceneObject]) -> list[int]:
    """Indices of the objects that `expression` describes (empty if none)."""
    text = expression.strip().lower()
    relation = next((r for r in RELATIONS if f" {r} " in text), None)
    if relation is None:
        target = _parse_phrase(text.split())
        return [i for i, o in enumerate(objects) if _fits(o, target)]
    head, tail = text.split(f" {relation} ", 1)
    target, anchor = _parse_phrase(head.split()), _parse_phrase(tail.split())
    return [
        i
        for i, o in enumerate(objects)
        if _fits(o, target)
        and any(j != i and _fits(a, anchor) and holds(relation, o, a) for j, a in enumerate(objects))
    ]


def _unique_phrase(index: int, objects: list[SceneObject]) -> str | None:
    """The shortest plain phrase that picks out objects[index] alone, if any."""
    for with_size in (False, True):
        phrase = _phrase(objects[index], with_size)
        if resolve(phrase, objects) == [index]:
            return phrase
    return None


def _relational(index: int, objects: list[SceneObject], rng: np.random.Generator) -> str | None:
    """A unique "<target> <relation> <anchor>" expression for objects[index], if any."""
    candidates = []
    for relation in RELATIONS:
        for j, anchor in enumerate(objects):
            if j == index or not holds(relation, objects[index], anchor):
                continue
            anchor_phrase = _unique_phrase(j, objects)
            if anchor_phrase is None:
                continue
            for with_size in (False, True):
                text = f"{_phrase(objects[index], with_size)} {relation} {anchor_phrase}"
                if resolve(text, objects) == [index]:
                    candidates.append(text)
                    break
    if not candidates:
        return None
    return candidates[int(rng.integers(len(candidates)))]


def describe(
    index: int, objects: list[SceneObject], rng: np.random.Generator, extra_relational: float = 0.4
) -> list[str]:
    """Unique referring expressions for objects[index] (possibly none).

    The plain phrase comes first when one exists; a spatial relation is used when
    it is needed, and added with probability `extra_relational` when it is not,
    so relations appear in the data without making most expressions relational.
    """
    plain = _unique_phrase(index, objects)
    sentences = [plain] if plain else []
    if plain is None or rng.random() < extra_relational:
        relational = _relational(index, objects, rng)
        if relational:
            sentences.append(relational)
    return sentences
