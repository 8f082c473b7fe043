"""Conversion tools: the authors' checkpoints to Hub-ready folders, model cards, pushing, and upcycling Llava models."""

from .converter import ConversionSummary, convert_checkpoint
from .errors import ConversionError
from .model_card import ModelCardInfo, build_model_card, load_eval_results

__all__ = [
    "ConversionError",
    "ConversionSummary",
    "ModelCardInfo",
    "build_model_card",
    "convert_checkpoint",
    "load_eval_results",
]
