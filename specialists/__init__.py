"""What a specialist is: a timm ConvNeXtV2 encoder, its card, task heads and local training."""

from specialists.artifact import ArtifactError
from specialists.card import SpecialistCard
from specialists.io import load_specialist, save_specialist
from specialists.model import Specialist

__all__ = ["ArtifactError", "SpecialistCard", "Specialist", "save_specialist", "load_specialist"]
