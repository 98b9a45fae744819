"""Prompt templates and per-class prompt lists for zero-shot and similarity-guided heads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from priorcase.classifiers.reports import canonical_column, describe

MAMMOGRAPHY_TEMPLATES: tuple[str, ...] = (
    "a mammogram showing {}.",
    "a mammography image of {}.",
    "a screening mammogram with {}.",
    "a breast x-ray showing {}.",
)

IMAGE_TEMPLATES: tuple[str, ...] = (
    "a medical image showing {}.",
    "an image of {}.",
    "a photo of {}.",
    "a clinical image with {}.",
)

# Words a class phrase gets in a prompt but not in a report ("dense glandular breast tissue").
PROMPT_SUFFIX: dict[str, str] = {"tissue": " tissue"}


def class_phrase(
    cls: str, column: str | None = None, vocabulary: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """What a class code means in words; unknown codes are used as written (``_`` -> space)."""
    phrase = describe(column, str(cls), vocabulary)
    if phrase is None:
        return str(cls).replace("_", " ")
    return phrase + PROMPT_SUFFIX.get(canonical_column(column or ""), "")


def class_prompts(
    classes: Iterable[str],
    column: str | None = None,
    templates: Sequence[str] = IMAGE_TEMPLATES,
    vocabulary: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, list[str]]:
    """Prompts per class: every template filled with the class's phrase."""
    return {
        str(c): [t.format(class_phrase(str(c), column, vocabulary)) for t in templates]
        for c in classes
    }
