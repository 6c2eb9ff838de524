"""Imported as the last line of ``sae_lens_maira.loading``: once it is, the package is complete.

When this package is what first imports SAELens, :mod:`sae_lens_maira.registration` cannot
register during that import (the package is half-defined); it waits for this module with a
post-import hook instead, so the package needs no import of the registration module.
"""
