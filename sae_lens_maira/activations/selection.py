"""Which token positions feed an SAE: the study's policy and the simple alternatives.

The study trains on the variable text of the prompt (indication, technique, comparison, prior
report), the report, and the first and last token of each image run, dropping intermediate image
tokens and the fixed boilerplate. Policies are sets of :class:`Role` values, so a custom policy is
just a list of role names.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sae_lens_maira.processing.roles import Role

POLICIES: dict[str, frozenset[Role]] = {
    "study": frozenset(
        {
            Role.IMAGE_FIRST,
            Role.IMAGE_LAST,
            Role.INDICATION,
            Role.TECHNIQUE,
            Role.COMPARISON,
            Role.PRIOR_REPORT,
            Role.PHRASE,
            Role.REPORT,
        }
    ),
    "all": frozenset(r for r in Role if r is not Role.PAD),
    "text": frozenset(r for r in Role if r is not Role.PAD and not r.is_image),
    "image": frozenset({Role.IMAGE_FIRST, Role.IMAGE_MIDDLE, Role.IMAGE_LAST}),
}


def resolve_policy(policy: str | Iterable[str | int | Role]) -> frozenset[Role]:
    """A policy name (``study``, ``all``, ``text``, ``image``) or an explicit list of roles."""
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(
                f"unknown selection policy {policy!r}; choose one of {sorted(POLICIES)} or a list of roles"
            )
        return POLICIES[policy]
    roles = frozenset(Role.parse(r) for r in policy)
    if not roles:
        raise ValueError("a selection policy needs at least one role")
    return roles


def selection_mask(
    roles: torch.Tensor, policy: str | Iterable[str | int | Role] = "study"
) -> torch.Tensor:
    """Boolean mask of the positions whose role the policy keeps (padding never kept)."""
    keep = torch.tensor(
        sorted(int(r) for r in resolve_policy(policy) if r is not Role.PAD), device=roles.device
    )
    return torch.isin(roles, keep)


def policy_label(policy: str | Iterable[str | int | Role]) -> str | list[str]:
    """How reports name a policy: its name, or the sorted role names of an explicit list."""
    if isinstance(policy, str):
        resolve_policy(policy)
        return policy
    return sorted(r.name.lower() for r in resolve_policy(policy))


def mark_unselected(
    tokens: torch.Tensor, roles: torch.Tensor, policy: str | Iterable[str | int | Role] = "study"
) -> torch.Tensor:
    """Token ids with every position the policy drops marked (see :mod:`position_marks`), so
    SAELens's ActivationsStore and evals, which see only ids, skip exactly those positions."""
    from sae_lens_maira.model.position_marks import mark_outside

    return mark_outside(torch.as_tensor(tokens), selection_mask(torch.as_tensor(roles), policy))
