"""eet_hf's exception type."""


class EetUnsupportedError(ValueError):
    """A model, option or input eet_hf does not support; the message names it and says what to do."""
