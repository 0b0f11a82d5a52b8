"""srprune: one-shot structured pruning of image super-resolution transformers."""
from .checkpoint import CheckpointError, load_model, save_model
from .models import create_model

__version__ = "0.1.0"
__all__ = ["CheckpointError", "create_model", "load_model", "save_model", "__version__"]
