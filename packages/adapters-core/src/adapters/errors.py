"""Exceptions raised by the library; each message says what to do about it."""


class AdapterError(Exception):
    """Base class of every error this library raises on purpose."""


class AdapterConfigError(AdapterError, ValueError):
    """A config name, field or value is invalid."""


class AdapterNameError(AdapterError, ValueError):
    """An adapter name is invalid, unknown or already taken."""


class UnsupportedModelError(AdapterError, TypeError):
    """No installed plugin supports the model."""


class AdapterLoadError(AdapterError, OSError):
    """An adapter folder is missing, corrupt or does not fit the model."""


class CompositionError(AdapterError, ValueError):
    """An adapter setup cannot be activated."""


class PluginConflictError(AdapterError, RuntimeError):
    """Two installed plugins claim the same model type."""
