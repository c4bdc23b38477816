"""What a specialist is: a timm ConvNeXtV2 encoder, its card, task heads and local training."""

from specialists.card import SpecialistCard
from specialists.io import SpecialistMismatchError, load_specialist, save_specialist
from specialists.model import Specialist

__all__ = ["SpecialistCard", "Specialist", "SpecialistMismatchError", "save_specialist", "load_specialist"]
