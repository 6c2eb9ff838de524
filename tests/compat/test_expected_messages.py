"""train_sae's SAELens chatter about its deliberate choices is dropped; nothing else is."""

import logging
import warnings

from sae_lens_maira.compat.sae_lens import expected_messages_silenced


def test_expected_sae_lens_messages_are_dropped_and_others_kept(caplog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with expected_messages_silenced():
            warnings.warn("The training dataset contains fewer samples (8) than ...", stacklevel=1)
            warnings.warn("To copy construct from a tensor, it is recommended ...", stacklevel=1)
            warnings.warn("pretokenized dataset has context_size 430, but ...", RuntimeWarning,
                          stacklevel=1)  # fmt: skip
            warnings.warn("a real problem", stacklevel=1)
        warnings.warn("The training dataset contains fewer samples (outside)", stacklevel=1)
    assert [str(w.message) for w in seen] == [
        "a real problem", "The training dataset contains fewer samples (outside)"
    ]  # fmt: skip
    log = logging.getLogger("sae_lens")
    with caplog.at_level(logging.WARNING, logger="sae_lens"):
        with expected_messages_silenced():
            log.warning("You just passed in a dataset which will override the one ...")
            log.warning("You just passed in a model which will override the one ...")
            log.warning("something SAELens really wants said")
        log.warning("You just passed in a model which will override (outside)")
    assert [r.getMessage() for r in caplog.records] == [
        "something SAELens really wants said",
        "You just passed in a model which will override (outside)",
    ]
