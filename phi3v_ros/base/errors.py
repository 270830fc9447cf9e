"""The project's own exception types: every failure a user can cause maps to one of these."""


class Phi3vRosError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageConversionError(Phi3vRosError, ValueError):
    """A camera frame could not be turned into an RGB image (bad encoding, size or data)."""


class PromptError(Phi3vRosError, ValueError):
    """A prompt was refused (empty, too long, ...)."""


class ModelLoadError(Phi3vRosError, RuntimeError):
    """The model folder could not be loaded; the message says what to do about it."""


class EngineError(Phi3vRosError, RuntimeError):
    """Inference failed, or the worker process running it died."""


class ConfigurationError(Phi3vRosError, ValueError):
    """A parameter the node cannot start with; the message names it and says why."""
