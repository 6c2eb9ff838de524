"""A role for every token position, so analyses can keep or drop positions by what they are.

The study trains SAEs on the variable text and on the first and last token of each image run,
dropping intermediate image tokens and the prompt's fixed boilerplate; these labels make that
(and any other policy) a simple mask.
"""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    """What a token position holds. Stored as int8/int64 tensors next to the token ids."""

    BOILERPLATE = 0  # system text, fixed instruction text, chat markers, section headers
    IMAGE_FIRST = 1  # first patch token of an image run
    IMAGE_MIDDLE = 2  # every other patch token
    IMAGE_LAST = 3  # last patch token of an image run
    INDICATION = 4
    TECHNIQUE = 5
    COMPARISON = 6
    PRIOR_REPORT = 7
    PHRASE = 8  # the finding to ground in phrase-grounding prompts
    REPORT = 9  # the target report (teacher forcing) or generated text
    PAD = 10  # padding added when batching

    @property
    def is_image(self) -> bool:
        return self in (Role.IMAGE_FIRST, Role.IMAGE_MIDDLE, Role.IMAGE_LAST)

    @classmethod
    def parse(cls, name: str | int | Role) -> Role:
        """Accept ``Role``, its int value or a case-insensitive name (``"image_first"``)."""
        if isinstance(name, Role):
            return name
        if isinstance(name, int):
            return cls(name)
        try:
            return cls[name.strip().upper()]
        except KeyError:
            valid = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown token role {name!r}; valid roles: {valid}") from None


#: Image order within a prompt, as MAIRA-2 expects them.
IMAGE_SLOTS = ("frontal", "lateral", "prior_frontal")
