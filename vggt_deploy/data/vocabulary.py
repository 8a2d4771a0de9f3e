"""The words of the synthetic grounding world: shapes, colours, sizes, relations.

Categories are "<colour> <shape>" (18 of them); sizes and spatial relations only
appear in referring expressions. Category ids are 1-based, as COCO expects.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# BGR (opencv order), saturated so colour is a real cue, but jittered per object.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (40, 40, 220),
    "green": (50, 190, 40),
    "blue": (220, 80, 30),
    "yellow": (30, 220, 230),
    "cyan": (220, 210, 40),
    "magenta": (200, 40, 210),
}

# Object side as a fraction of the canvas side; the gaps between ranges keep the
# size words unambiguous.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.08, 0.12),
    "medium": (0.18, 0.25),
    "large": (0.34, 0.44),
}

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


def category_names() -> list[str]:
    """All category names in id order (id = index + 1)."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def category_id(colour: str, shape: str) -> int:
    """The 1-based COCO category id of a colour/shape pair."""
    return category_names().index(f"{colour} {shape}") + 1


def all_words() -> list[str]:
    """Every word the generator can emit, for building a tokenizer vocabulary."""
    words = ["the"] + list(SHAPES) + list(COLOURS) + list(SIZES)
    for relation in RELATIONS:
        words.extend(relation.split())
    return sorted(set(words))
