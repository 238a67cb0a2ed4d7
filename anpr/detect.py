"""Plate detection: a batch of frames in, one typed array of plate boxes out.

`Detections` keeps every box of a batch in parallel numpy arrays (as supervision
does), with the index of the frame each box belongs to, so the stages after it work
on whole batches instead of per-frame lists of objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from anpr.weights import ModelFile, model_file


@dataclass(frozen=True, slots=True)
class Detections:
    xyxy: np.ndarray  # (N, 4) float32: x1, y1, x2, y2 in pixels of the box's frame
    confidence: np.ndarray  # (N,) float32
    frame: np.ndarray  # (N,) int32: position of the box's frame in the batch

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @classmethod
    def concatenate(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.xyxy for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.confidence for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.frame for p in parts]).astype(np.int32, copy=False),
        )

    def __len__(self) -> int:
        return len(self.confidence)

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        return Detections(self.xyxy[index], self.confidence[index], self.frame[index])


class PlateDetector(Protocol):
    """Finds plates in a batch of BGR frames."""

    identifier: str  # model name and hash, stored with every read

    def detect(self, images: Sequence[np.ndarray]) -> Detections: ...


class YoloPlateDetector:
    """Ultralytics YOLO plate detector; one model call per batch of frames."""

    def __init__(
        self,
        weights: ModelFile | None = None,
        *,
        confidence: float = 0.25,
        input_size: int = 640,
        device: str = "cpu",
    ) -> None:
        from ultralytics import YOLO  # heavy import kept out of CLI start-up

        self.weights = weights or model_file("plate-yolov8n")
        self.identifier = self.weights.identifier
        self.confidence = confidence
        self.input_size = input_size
        self.device = device
        self._model = YOLO(str(self.weights.path), task="detect")

    def detect(self, images: Sequence[np.ndarray]) -> Detections:
        if not images:
            return Detections.empty()
        results = self._model.predict(
            list(images),
            conf=self.confidence,
            imgsz=self.input_size,
            device=self.device,
            verbose=False,
            batch=len(images),
        )
        parts = []
        for position, result in enumerate(results):
            boxes = result.boxes
            count = len(boxes)
            if count:
                parts.append(
                    Detections(
                        boxes.xyxy.cpu().numpy(),
                        boxes.conf.cpu().numpy(),
                        np.full(count, position, np.int32),
                    )
                )
        return Detections.concatenate(parts)
