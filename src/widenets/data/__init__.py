"""Data sets with no download: scikit-learn's digits, synthetic tasks, a user's own files."""

from .dataset import Dataset, one_hot_targets
from .digits import load_digits
from .files import load_file, read_csv
from .synthetic import interpolate, sphere, teacher_regression

__all__ = ["Dataset", "one_hot_targets", "load_digits", "load_file", "teacher_regression",
           "sphere", "interpolate", "read_csv"]
