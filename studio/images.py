"""Turn user uploads into checked PIL images (never trusting the file name or its extension)."""

from __future__ import annotations

from pathlib import Path

from studio.errors import ValidationError

MAX_UPLOAD_PIXELS = 4096 * 4096
FOLDER_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}  # what a folder source lists


def load_image(value, field: str, mode: str = "RGB"):
    """Open a path, numpy array or PIL image as a verified image, or raise ValidationError naming `field`."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if value is None:
        raise ValidationError(f"{field} is required: upload an image", field)
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(value.astype("uint8"))
        else:
            path = Path(value)
            with Image.open(path) as probe:
                probe.verify()
            image = Image.open(path)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as exc:
        raise ValidationError(f"{field} is not a readable image (PNG, JPEG or WebP): {exc}", field) from None
    if image.width * image.height > MAX_UPLOAD_PIXELS:
        raise ValidationError(f"{field} is {image.width}x{image.height}; at most {MAX_UPLOAD_PIXELS} pixels", field)
    return image.convert(mode)
