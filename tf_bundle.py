"""A TensorFlow checkpoint bundle (`NAME.index` + `NAME.data-00000-of-00001`, the "V2" format that
`tf.train.Saver` writes) read without TensorFlow: every tensor as a numpy array, its bytes checked
against the bundle's own CRC32C.

The index is a sorted-string table (LevelDB's format): data blocks of prefix-compressed key/value
entries, an index block pointing at them, and a 48-byte footer ending in a magic number. Key '' holds
the BundleHeaderProto (number of shards, byte order); every other key is a tensor's name, whose value is
a BundleEntryProto (dtype, shape, shard, offset, size, masked CRC32C of its bytes in the data file).
Only what a checkpoint of plain float tensors in one shard uses is read; anything else is refused.
"""

from pathlib import Path

import numpy as np

from cli import CheckpointError

MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) and a CRC (4), after every block
DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 9: np.dtype("<i8")}  # TF's DataType enum


def varint(buf, pos):
    """A protobuf/LevelDB base-128 varint at `pos`: (value, position after it)."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a varint runs past its buffer")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def proto_fields(buf):
    """The fields of a serialized protobuf message: [(field number, value)], a varint as an int, a
    length-delimited field as bytes, a fixed32/fixed64 as an int."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            size, pos = varint(buf, pos)
            value, pos = bytes(buf[pos : pos + size]), pos + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by a bundle")
        if pos > len(buf):
            raise ValueError("a protobuf field runs past its message")
        fields.append((number, value))
    return fields


def block_entries(index, offset, size):
    """The (key, value) entries of one table block: each key shares a prefix with the one before it."""
    block = index[offset : offset + size]
    if offset + size + BLOCK_TRAILER_BYTES > len(index) or size < 4:
        raise ValueError("a block runs past the end of the index")
    if index[offset + size] != 0:
        raise ValueError("a block is compressed (only uncompressed tables are read)")
    restarts = int.from_bytes(block[-4:], "little")
    end, pos, key, entries = size - 4 * (restarts + 1), 0, b"", []
    while pos < end:
        shared, pos = varint(block, pos)
        unshared, pos = varint(block, pos)
        value_size, pos = varint(block, pos)
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        entries.append((key, bytes(block[pos : pos + value_size])))
        pos += value_size
    if pos != end:
        raise ValueError("a block's entries do not end where its restart points begin")
    return entries


def table_entries(index):
    """Every (key, value) of the sorted-string table `index` (the bytes of a .index file), in order."""
    if len(index) < FOOTER_BYTES or int.from_bytes(index[-8:], "little") != MAGIC:
        raise ValueError("it does not end in a table footer's magic number")
    footer = index[-FOOTER_BYTES:]
    _, pos = varint(footer, 0)  # the metaindex block's handle (offset, size): empty in a bundle
    _, pos = varint(footer, pos)
    index_offset, pos = varint(footer, pos)
    index_size, _ = varint(footer, pos)
    entries = []
    for _, handle in block_entries(index, index_offset, index_size):
        offset, pos = varint(handle, 0)
        size, _ = varint(handle, pos)
        entries += block_entries(index, offset, size)
    return entries


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), the checksum TensorFlow keeps of every tensor's bytes."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def unmasked(masked):
    """TensorFlow stores a CRC 'masked' (rotated and offset) so that CRCs of CRCs stay strong."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def entry(value):
    """A BundleEntryProto as a dict: dtype, shape, shard_id, offset, size, crc32c."""
    fields = dict.fromkeys(("dtype", "shard_id", "offset", "size", "crc32c"), 0)
    names, shape = {1: "dtype", 3: "shard_id", 4: "offset", 5: "size", 6: "crc32c"}, []
    for number, field in proto_fields(value):
        if number == 2:  # TensorShapeProto: repeated Dim (field 2) of {size: 1}
            for dim_number, dim in proto_fields(field):
                if dim_number == 2:
                    shape.append(dict(proto_fields(dim)).get(1, 0))
        elif number in names:
            fields[names[number]] = field
        elif number == 7:
            raise ValueError("a tensor is split into slices (only whole tensors are read)")
    if not all(isinstance(v, int) for v in [*fields.values(), *shape]):
        raise ValueError("an entry's fields are not the numbers a BundleEntryProto holds")
    return {**fields, "shape": tuple(shape)}


DATA_SUFFIX = ".data-00000-of-00001"


def read_bundle(prefix):
    """{name: numpy array} of the bundle whose files are PREFIX.index and PREFIX.data-00000-of-00001
    (`prefix` may also name either file). Raises CheckpointError, in one sentence, for a bundle that is
    missing, truncated, damaged or uses what this reader does not read."""
    prefix = str(prefix).removesuffix(".index").removesuffix(DATA_SUFFIX)
    index_path, data_path = Path(prefix + ".index"), Path(prefix + DATA_SUFFIX)
    if Path(prefix).is_file():
        raise CheckpointError(f"{prefix} is a file, not a TensorFlow bundle (PREFIX.index beside PREFIX{DATA_SUFFIX}); "
                              "is it a torch state_dict (another --format)?")  # fmt: skip
    for path in (index_path, data_path):
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; a TensorFlow bundle is PREFIX.index beside {data_path.name}")
    data = data_path.read_bytes()
    try:
        entries = table_entries(index_path.read_bytes())
        if not entries or entries[0][0] != b"":
            raise ValueError("it has no bundle header (its first key must be empty)")
        header = dict(proto_fields(entries[0][1]))
        entries = [(key.decode(), entry(value)) for key, value in entries[1:]]
    except (ValueError, TypeError, IndexError, OverflowError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_path} is not a readable TensorFlow checkpoint index (damaged?): {e}") from None
    if header.get(1, 1) != 1 or header.get(2, 0) != 0:
        raise CheckpointError(
            f"{index_path} is a bundle of {header.get(1)} shards or big-endian; one little-endian shard is read"
        )
    return {name: tensor(name, e, data, data_path) for name, e in entries}


def tensor(name, e, data, data_path):
    """One entry's tensor from the data file, its size and CRC checked."""
    if e["dtype"] not in DTYPES:
        raise CheckpointError(f"tensor {name} has TensorFlow dtype {e['dtype']}; only float and int tensors are read")
    dtype = DTYPES[e["dtype"]]
    count = int(np.prod(e["shape"], dtype=np.int64))
    end = e["offset"] + e["size"]
    if e["shard_id"] != 0 or e["size"] != count * dtype.itemsize or end > len(data):
        raise CheckpointError(
            f"{data_path} is truncated or does not match its index: tensor {name} needs bytes {e['offset']}..{end} "
            f"of {len(data)}"
        )
    raw = data[e["offset"] : end]
    if crc32c(raw) != unmasked(e["crc32c"]):
        raise CheckpointError(f"{data_path} or its index is damaged: the bytes of tensor {name} fail their CRC32C")
    return np.frombuffer(raw, dtype=dtype).reshape(e["shape"]).copy()
