"""Zeek-style JSON-lines event logs: one file per event kind (flows.jsonl, dicom.jsonl, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from sensor.events import LOG_NAMES, Event


class EventLogWriter:
    """Write events to ``DIR/<log>.jsonl``; files are opened on first use and closed by ``close``."""

    def __init__(self, directory: str | Path, logs: tuple[str, ...] = LOG_NAMES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self._files: dict[str, IO[str]] = {}
        self.written: dict[str, int] = {}

    def write(self, event: Event) -> None:
        name = event.log_name
        if name not in self.logs:
            return
        fh = self._files.get(name)
        if fh is None:
            fh = self._files[name] = open(self.directory / f"{name}.jsonl", "w", encoding="utf-8")
        fh.write(json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False))
        fh.write("\n")
        self.written[name] = self.written.get(name, 0) + 1

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    def __enter__(self) -> "EventLogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
