"""A weaker version of a TorchScript model, for tests that need two real models of different skill.

Usage: weaken_model.py SRC_DIR DST_DIR VERSION CONSTANT FACTOR

Copies SRC_DIR's model.pt to DST_DIR with the frozen constant `model/constants/CONSTANT` (a float32
tensor) multiplied by FACTOR, patched in place in the archive (stored entries: same length, the
CRC-32 rewritten in the local header and the central directory), and writes model.json with
VERSION, the new checksum and no model.onnx. For the bundled network, constant 8 is the LSTM
head's weight: factor 0 leaves its linear autoregressive part alone. Prints {"version", "sha256"}.
"""
import hashlib
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path


def patched(archive: bytes, name: str, factor: float) -> bytes:
    data = bytearray(archive)
    with zipfile.ZipFile(Path(sys.argv[1]) / "model.pt") as z:
        info = next(i for i in z.infolist() if i.filename.endswith(name))
    assert info.compress_type == zipfile.ZIP_STORED, "the constant must be stored, not deflated"
    offset = info.header_offset
    name_len, extra_len = struct.unpack_from("<HH", data, offset + 26)
    start = offset + 30 + name_len + extra_len
    count = info.file_size // 4
    values = struct.unpack_from(f"<{count}f", data, start)
    struct.pack_into(f"<{count}f", data, start, *(v * factor for v in values))
    crc = zlib.crc32(data[start : start + info.file_size]) & 0xFFFFFFFF
    struct.pack_into("<I", data, offset + 14, crc)
    position = 0
    while True:
        position = data.find(b"PK\x01\x02", position)
        assert position >= 0, "central directory entry not found"
        length = struct.unpack_from("<H", data, position + 28)[0]
        if data[position + 46 : position + 46 + length].decode() == info.filename:
            struct.pack_into("<I", data, position + 16, crc)
            break
        position += 4
    return bytes(data)


def main() -> None:
    source, target, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    constant, factor = sys.argv[4], float(sys.argv[5])
    model = patched((source / "model.pt").read_bytes(), f"constants/{constant}", factor)
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.pt").write_bytes(model)
    metadata = json.loads((source / "model.json").read_text())
    metadata["version"] = version
    metadata["model_sha256"] = hashlib.sha256(model).hexdigest()
    metadata.pop("onnx_sha256", None)
    (target / "model.json").write_text(json.dumps(metadata, indent=2))
    print(json.dumps({"version": version, "sha256": metadata["model_sha256"]}))


if __name__ == "__main__":
    main()
