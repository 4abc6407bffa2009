"""augment: style-based data augmentation with neural style transfer.

Library first: ``augment.run(config)`` runs a whole job, ``augment.Stylizer(styles)`` repaints
image after image with the network loaded once (a torchvision-style transform), and
``augment.stylize(content, style)`` repaints one image. The ``augment`` command is a thin layer
over these.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Stylizer, run, stylize  # noqa: E402
from .config import RunConfig, build_config  # noqa: E402
from .pipeline.summary import RunSummary  # noqa: E402

__all__ = ["RunConfig", "RunSummary", "Stylizer", "build_config", "run", "stylize", "__version__"]
