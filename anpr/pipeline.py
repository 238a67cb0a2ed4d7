"""The hot loop: frames -> plate boxes -> crops -> text -> reads -> sinks.

Everything the pipeline does to a batch is in `Pipeline.process`, top to bottom.
Stages are passed in (a detector, a recogniser, sinks), so swapping a model or adding
a sink never touches this file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from anpr.detect import Detections, PlateDetector
from anpr.ocr import PlateRecogniser, TextReads, cut_plates
from anpr.plates import PlateRead, choose_plate
from anpr.source import FrameBatch, FrameReader

MIN_PLATE_LENGTH = 2  # shorter strings are OCR noise, not a registration


class ReadSink(Protocol):
    """Receives every batch of reads (a database, a JSON-lines stream, ...)."""

    def write(self, reads: Sequence[PlateRead]) -> None: ...


@dataclass
class RunStats:
    frames: int = 0
    reads: int = 0
    dropped: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def assemble_reads(
    batch: FrameBatch,
    detections: Detections,
    texts: TextReads,
    detector_model: str,
    ocr_model: str,
    min_confidence: float = 0.0,
) -> list[PlateRead]:
    """One PlateRead per detection whose text looks like a registration."""
    reads = []
    for i, candidates in enumerate(texts.candidates):
        chosen = choose_plate(candidates)
        combined = float(detections.confidence[i]) * chosen.confidence
        if len(chosen.plate) < MIN_PLATE_LENGTH or combined < min_confidence:
            continue
        frame = batch.frames[detections.frame[i]]
        reads.append(PlateRead(
            source=frame.source, frame=frame.index, time=frame.time, plate=chosen.plate, raw_text=texts.raw[i],
            confidence=combined, ocr_confidence=chosen.confidence,
            detector_confidence=float(detections.confidence[i]),
            box=tuple(float(v) for v in detections.xyxy[i]),  # type: ignore[arg-type]
            detector_model=detector_model, ocr_model=ocr_model,
            candidates=chosen.candidates, country=chosen.country, format=chosen.format,
        ))
    return reads


class Pipeline:
    def __init__(
        self,
        detector: PlateDetector,
        recogniser: PlateRecogniser,
        sinks: Sequence[ReadSink],
        batch_size: int = 8,
        min_confidence: float = 0.0,
    ) -> None:
        self.detector = detector
        self.recogniser = recogniser
        self.sinks = list(sinks)
        self.batch_size = batch_size
        self.min_confidence = min_confidence

    def process(self, batch: FrameBatch) -> list[PlateRead]:
        images = batch.images
        detections = self.detector.detect(images)
        texts = self.recogniser.recognise(cut_plates(images, detections))
        reads = assemble_reads(batch, detections, texts, self.detector.identifier,
                               self.recogniser.identifier, self.min_confidence)
        for sink in self.sinks:
            sink.write(reads)
        return reads

    def run(
        self,
        reader: FrameReader,
        stop: threading.Event | None = None,
        progress: Callable[[RunStats], None] | None = None,
    ) -> RunStats:
        """Process batches until the source ends or `stop` is set; a batch in flight completes."""
        stats = RunStats()
        try:
            for batch in reader.batches(self.batch_size, stop):
                reads = self.process(batch)
                stats.frames += len(batch)
                stats.reads += len(reads)
                stats.dropped = reader.dropped
                if progress:
                    progress(stats)
                if stop is not None and stop.is_set():
                    break
        finally:
            stats.finished = time.perf_counter()
            reader.close()
        return stats
