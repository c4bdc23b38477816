"""Fusion: the ensemble of frozen specialists, the any-sensor student distilled from it, probes, pruning.

One-line student load: ``from fusion import load_student; student = load_student("outputs/<run>/student")``.
"""

from fusion.ensemble import Ensemble
from fusion.registry import Registry
from fusion.student import Student, load_student, save_student
from fusion.views import ViewPlan, plan_view

__all__ = ["Ensemble", "Registry", "Student", "ViewPlan", "load_student", "plan_view", "save_student"]
