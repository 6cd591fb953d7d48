"""What the server accepts: every limit a client's request is checked against, with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lgrnet.errors import LGRNetError

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Limits of ``lgrnet serve`` (each one a command-line flag).

    The defaults keep one request cheap: the model letterboxes every image to its canvas (at most a few hundred
    pixels), so a 20-megapixel photograph already carries far more than it reads.
    """

    #: Largest request body in bytes (the encoded image plus the form or JSON around it).
    max_body_bytes: int = 16 * MIB
    #: Largest image in pixels (width x height), checked from the file's header before decoding.
    max_image_pixels: int = 20_000_000
    #: Most expressions in one request.
    max_expressions: int = 16
    #: Longest expression in characters (the model reads its first text.max_length word pieces anyway).
    max_expression_chars: int = 1_000
    #: Most (image, expression) pairs waiting for the model; a request beyond it gets 429 (try again later).
    max_pending: int = 256
    #: Most pairs in one forward pass.
    max_batch: int = 16
    #: How long the first pair of a batch waits for others, in milliseconds.
    max_wait_ms: float = 5.0
    #: Folder whose images a JSON request may name by path (``image_path``); None: paths are refused.
    image_root: Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels", "max_expressions", "max_expression_chars", "max_pending",
                     "max_batch"):
            if int(getattr(self, name)) < 1:
                raise LGRNetError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:  # also refuses NaN
            raise LGRNetError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if self.max_pending < self.max_expressions:
            raise LGRNetError(f"--max-pending ({self.max_pending}) must be at least --max-expressions "
                              f"({self.max_expressions}), or no request could be taken")
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise LGRNetError(f"--image-root {self.image_root}: no such folder")


def _flag(name: str) -> str:
    """The command-line flag of a field (the body limit's flag is in MiB, so it keeps its field name)."""
    return name if name == "max_body_bytes" else "--" + name.replace("_", "-")
