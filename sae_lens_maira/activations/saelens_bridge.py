"""Studies as a pretokenized dataset that stock SAELens code can run through HookedMaira2.

SAELens's ``ActivationsStore`` and evals pass only token ids (``run_with_cache(tokens, ...)``), so
each image run is written as virtual image ids (see :mod:`sae_lens_maira.model.image_bank`): the
dataset's ``tokens`` column is self-contained once the model has the matching bank attached.
Rows are right-padded to ``context_size`` with the pad id; causal attention leaves the real
positions untouched. With a ``selection`` policy, every position outside it (padding included) is
marked (:mod:`sae_lens_maira.model.position_marks`), and
:class:`~sae_lens_maira.activations.selection_store.SelectionActivationsStore` and the evals skip
the marked positions: training and evals then see the same positions the activation cache holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from sae_lens_maira.activations.selection import mark_unselected
from sae_lens_maira.data.skips import SkipCollector
from sae_lens_maira.data.study import Study
from sae_lens_maira.model.image_bank import ImageBank, virtual_image_ids
from sae_lens_maira.processing.images import ImageLoadError
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.processing.roles import Role

logger = logging.getLogger(__name__)


def studies_to_token_dataset(
    studies: Iterable[Study],
    processor: Maira2Processor,
    bank: ImageBank,
    *,
    d_vocab: int,
    context_size: int,
    with_report: bool = True,
    show_progress: bool = True,
    skipped: SkipCollector | dict[str, str] | None = None,
    selection: str | list[str] | None = None,
) -> Dataset:
    """One row per study: ``tokens`` (virtual image ids), ``roles``, ``study_id``.

    Images are appended to ``bank``; attach the same bank to the model
    (``model.attach_image_bank(bank)``) before SAELens runs it. Studies whose images cannot be
    read are left out and recorded in ``skipped`` (a :class:`SkipCollector`, or a dict study
    id -> message) when given; without one they raise. ``selection`` (a policy of
    :mod:`selection`, as the cache's ``selection``) marks the positions outside it; ``None``
    leaves every id plain.
    """
    pad = processor.pad_token_id
    rows: dict[str, list] = {"tokens": [], "roles": [], "study_id": []}
    for study in tqdm(list(studies), desc="tokenizing studies", disable=not show_progress):
        enc = processor.encode_study(study, with_report=with_report)
        if len(enc) > context_size:
            raise ValueError(
                f"study {study.study_id} is {len(enc)} tokens long, more than context_size={context_size}; "
                "raise context_size (the model's context is the upper bound)"
            )
        if skipped is not None:
            try:
                processor.image_processor(
                    list(enc.images)
                )  # read every image once, now rather than mid-training
            except ImageLoadError as err:
                if isinstance(skipped, SkipCollector):
                    skipped.add_error(study.study_id, err)
                else:
                    skipped[study.study_id] = str(err)
                    logger.warning("skipping study %s: %s", study.study_id, err)
                continue
        tokens = list(enc.input_ids)
        image_positions = [i for i, t in enumerate(tokens) if t == processor.image_token_id]
        for run, image in enumerate(enc.images):
            ids = virtual_image_ids(d_vocab, bank.add(image), processor.n_patches).tolist()
            for pos, vid in zip(
                image_positions[run * processor.n_patches : (run + 1) * processor.n_patches], ids
            ):
                tokens[pos] = vid
        n_pad = context_size - len(tokens)
        tokens = tokens + [pad] * n_pad
        roles = list(enc.roles) + [int(Role.PAD)] * n_pad
        if selection is not None:
            tokens = mark_unselected(torch.tensor(tokens), torch.tensor(roles), selection).tolist()
        rows["tokens"].append(tokens)
        rows["roles"].append(roles)
        rows["study_id"].append(study.study_id)
    return Dataset.from_dict(rows)
