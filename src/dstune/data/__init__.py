"""Data: read files, detect row formats, and turn rows into training examples."""

from dstune.data.formats import RowError, detect_format, to_messages
from dstune.data.readers import Record, read_records
from dstune.data.sft import SFTData, SFTEncoder, prepare_sft_data

__all__ = [
    "Record",
    "RowError",
    "SFTData",
    "SFTEncoder",
    "detect_format",
    "prepare_sft_data",
    "read_records",
    "to_messages",
]
