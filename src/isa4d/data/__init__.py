"""Training data for ISA4D: motion sources and datasets.

The shard format (schema v1, docs/data.md) lives in :mod:`isa4d.data.format`, video encoding in
:mod:`isa4d.data.video_io`, shard writing in :mod:`isa4d.data.shards` and `isa4d prepare` in
:mod:`isa4d.data.prepare`.
"""

from isa4d.data.format import (
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    Cameras,
    Clip,
    ClipMeta,
    InvalidSampleError,
    Reference,
    SMPLParams,
    decode_sample,
    encode_sample,
    validate_clip,
)
from isa4d.data.shards import MANIFEST, read_manifest, shard_paths, write_shards
from isa4d.data.video_io import encode_mask_video, encode_video, read_mask_video, read_video, video_info

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Cameras",
    "Clip",
    "ClipMeta",
    "InvalidSampleError",
    "Reference",
    "SMPLParams",
    "decode_sample",
    "encode_mask_video",
    "encode_sample",
    "encode_video",
    "read_manifest",
    "read_mask_video",
    "read_video",
    "shard_paths",
    "validate_clip",
    "video_info",
    "write_shards",
]
