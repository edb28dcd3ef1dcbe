"""The readers of input shards, one table of formats for every stage (:mod:`hardfocus.readers.formats`).

- :func:`find_shards`: files, directories and globs as shards, each named by its path relative to what was given;
- :func:`check_columns`, :func:`iter_units`, :func:`read_shard`: the rows as scoring (and training's raw shards, and
  eval) read them, a sample per row or a status where it cannot be read;
- :func:`source_batches`: the rows as they are, every source column unchanged (export);
- :func:`reader_of`: the reader of a format by name; an unknown one is refused.
"""

from hardfocus.readers.find import find_shards
from hardfocus.readers.formats import READERS, check_columns, iter_units, read_shard, reader_of, shard_format
from hardfocus.readers.shard import MAX_ROW_BYTES, RowBlock, Shard, ShardReader, UnitRows
from hardfocus.readers.source_rows import source_batches

__all__ = ["MAX_ROW_BYTES", "READERS", "RowBlock", "Shard", "ShardReader", "UnitRows", "check_columns", "find_shards",
           "iter_units", "read_shard", "reader_of", "shard_format", "source_batches"]
