"""The one adapter from domain errors to gr.Error, for plain and generator handlers."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from studio.errors import StudioError

log = logging.getLogger(__name__)


def _to_gr_error(exc: Exception) -> gr.Error:
    if isinstance(exc, StudioError):
        prefix = f"{exc.field}: " if exc.field and not str(exc).startswith(exc.field) else ""
        return gr.Error(f"{prefix}{exc}")
    log.exception("unexpected error in a UI handler")
    return gr.Error(f"Unexpected error: {type(exc).__name__}: {exc}")


def user_errors(fn):
    """Wrap a handler so StudioError (and anything unexpected) reaches the page as a clear gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _to_gr_error(exc) from exc
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise _to_gr_error(exc) from exc
    return wrapper
