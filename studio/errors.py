"""Domain errors raised by services; the UI turns them into gr.Error messages."""

from __future__ import annotations


class StudioError(Exception):
    """An error the user can act on; `field` names the input at fault when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ValidationError(StudioError, ValueError):
    """An input is outside its allowed range or malformed."""


class BusyError(StudioError):
    """A resource is in use (e.g. a training run is already going)."""


def check_range(field: str, value, low, high, kind=float):
    """Return `value` converted to `kind`, or raise ValidationError naming the field and the range."""
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must be a number between {low} and {high}; got {value!r}", field) from None
    if kind is int and float(value) != converted:
        raise ValidationError(f"{field} must be a whole number between {low} and {high}; got {value!r}", field)
    if converted != converted or not (low <= converted <= high):
        raise ValidationError(f"{field} must be between {low} and {high}; got {value!r}", field)
    return converted


class CorruptImageError(StudioError):
    """An image file is unreadable: not an image, truncated, or with a damaged chunk."""
