"""Reads TensorBoard event files back (TFRecord framing + tensorboardX's Event message), for the tests."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path


def scalars(archive: bytes) -> dict[str, list[tuple[int, float]]]:
    """``tag → [(step, value)]`` of every scalar in the event files of a ``.tar.gz``."""
    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or "tfevents" not in Path(member.name).name:
                continue
            data = tar.extractfile(member).read()
            at = 0
            while at < len(data):
                (length,) = struct.unpack("<Q", data[at:at + 8])
                record = data[at + 12:at + 12 + length]  # after the length and its CRC
                at += 12 + length + 4  # and the record's CRC
                event = event_pb2.Event.FromString(record)
                for value in event.summary.value:
                    found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found
