"""Images for the model: datasets (IDX, image folders), preprocessing records and image folders."""

from ofa2_edge.data.dataset import PARTS, Dataset, DataSpec, batches, open_dataset
from ofa2_edge.data.preprocessing import Preprocessing

__all__ = ["PARTS", "DataSpec", "Dataset", "Preprocessing", "batches", "open_dataset"]
