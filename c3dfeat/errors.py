"""Typed errors. Every message names the offending value and says what to do.

The CLI turns any :class:`C3DFeatError` into a click error (exit code 1); nothing else in the
library imports click.
"""
from __future__ import annotations


class C3DFeatError(Exception):
    """Base class of all errors c3dfeat raises on purpose."""


class UnknownModelError(C3DFeatError, KeyError):
    """A model name or checkpoint tag that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownLayerError(C3DFeatError, ValueError):
    """A feature layer a model does not have."""


class WeightsError(C3DFeatError):
    """Weights cannot be found, downloaded, verified, converted or loaded."""


class WeightsNotFoundError(WeightsError):
    """The checkpoint is not in any weights directory and cannot be downloaded."""


class ChecksumError(WeightsError):
    """A file's SHA-256 does not match the published one."""


class UnsafePickleError(WeightsError):
    """A pickle tried to do more than hold containers, strings, numbers and arrays."""


class ConversionError(WeightsError):
    """An original Caffe / Caffe2 file does not fit the model it should convert to."""


class VideoDecodeError(C3DFeatError):
    """A video cannot be opened or decoded."""


class StoreError(C3DFeatError):
    """A feature file is missing, malformed, or incompatible with the request."""


class ProvenanceMismatchError(StoreError):
    """Feature files (or a file and a run) were made with different settings."""


class EvalError(C3DFeatError):
    """Evaluation inputs (labels, splits, features) are missing or inconsistent."""


class ConfigError(C3DFeatError, ValueError):
    """An option value (sampling, crops, shard ...) is out of range or inconsistent."""


class DecoderUnavailableError(ConfigError):
    """A decoder's library (decord, PyAV, torchcodec) is not installed or does not load: no video's fault."""


class InputError(C3DFeatError):
    """An input path or list file does not exist or cannot be parsed."""


class NoVideosError(InputError):
    """The inputs hold no video file (the CLI exits 2: bad usage)."""


class DeviceMemoryError(C3DFeatError):
    """A model's batch does not fit in the device's memory (the message names a batch size to try)."""


class ExtractInterrupted(C3DFeatError):
    """Ctrl-C / SIGTERM stopped an extraction; committed videos are safe in the file.

    `report` is the partial ExtractReport of the run (ok, failed, clips so far); `saved` is the
    number of videos the output file holds now. Rerunning the same command resumes.
    """

    def __init__(self, message: str, *, report: object = None, saved: int = 0) -> None:
        super().__init__(message)
        self.report = report
        self.saved = saved


class C3DFeatWarning(RuntimeWarning):
    """Something a user should know at once (the CLI prints it as one "warning:" line)."""
