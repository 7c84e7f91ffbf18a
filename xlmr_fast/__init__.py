"""xlmr_fast"""
from . import ops  # noqa
