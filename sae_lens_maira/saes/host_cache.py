"""Host-side copies of small facts about device buffers, so a training step need not read them.

Reading a CUDA tensor (``int(t)``) is a host sync that idles the GPU; the training step needs its
step count, "could any latent be dead?" and "is the input norm factor estimated yet?" every step. The SAE that updates a buffer knows the new
value, so it remembers it here, keyed on the buffer object (held, so its identity cannot be reused)
and its in-place version counter: anyone else's ``fill_``, ``load_state_dict`` or ``.to()`` changes
one of the two, and the next read goes to the device again.
"""

from __future__ import annotations

from torch import Tensor

from sae_lens_maira.compat.torch import version


class HostCache:
    """One remembered value per buffer state; ``None`` when the buffer changed since."""

    def __init__(self) -> None:
        self._entry: tuple[Tensor, int, float] | None = None

    def get(self, buffer: Tensor) -> float | None:
        entry = self._entry
        if entry is not None and entry[0] is buffer and entry[1] == version(buffer):
            return entry[2]
        return None

    def remember(self, buffer: Tensor, value: float) -> None:
        """Record ``value`` for the buffer as it is now (call after your own in-place update)."""
        self._entry = (buffer, version(buffer), value)
