"""Capture sources: pcap/pcapng files (gzip too) read in large blocks and handed out as batches.

Public API::

    PacketBatch(linktype, ts, frames, wirelen, source)       one link type per batch
    CaptureError                                              input is not a readable capture
    open_capture(path, batch_size=4096) -> CaptureReader      one file; .warnings .records .bytes .truncated
    open_captures(paths, batch_size=4096) -> CaptureSource    files/directories in first-packet time order
"""

from sensor.capture.batch import CaptureError, PacketBatch
from sensor.capture.reader import CaptureReader, is_capture_file, open_capture
from sensor.capture.source import CaptureSource, open_captures

__all__ = ["CaptureError", "CaptureReader", "CaptureSource", "PacketBatch", "is_capture_file", "open_capture",
           "open_captures"]
