"""priorcase: find similar prior cases and classify medical images by retrieval."""

from priorcase.api import PriorCase, open
from priorcase.records import CaseRecord, IngestReport, LoadedImage, SearchHit

__version__ = "0.1.0"
__all__ = ["CaseRecord", "IngestReport", "LoadedImage", "PriorCase", "SearchHit", "open"]
