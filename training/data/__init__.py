"""Seeded, deterministic datasets for the five reference models.

Every generator takes an explicit seed and returns numpy arrays plus the metadata a
checkpoint (and later model.json) needs: feature names and units, labels, vocabulary.
"""

from training.data.digits import DigitsData, load_digits_data
from training.data.loans import FEATURES, LoanData, make_loans
from training.data.logs import LogData, make_logs

__all__ = [
    "FEATURES",
    "DigitsData",
    "LoanData",
    "LogData",
    "load_digits_data",
    "make_loans",
    "make_logs",
]
