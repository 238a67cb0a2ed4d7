"""A plate read as the pipeline makes it, for tests that store reads without running the models."""

from anpr.records import PlateRead


def plate_read(plate: str, frame: int) -> PlateRead:
    """A read of `plate` in `frame` of a 25 frames/s clip, with the fields a real read has."""
    return PlateRead(
        "cam.mp4",
        frame,
        frame / 25,
        plate,
        plate.lower(),
        0.8,
        0.9,
        0.88,
        (10.0, 20.0, 110.5, 50.25),
        "plate-yolov8n@abc",
        "ppocrv4-rec@def",
        ((plate, 0.9), (plate[:-1], 0.05)),
        "FR",
        "LLDDDLL",
    )


class CollectedReads:
    """A sink that keeps every read it is given (and ignores track ends)."""

    def __init__(self) -> None:
        self.reads: list[PlateRead] = []

    def write(self, reads) -> None:
        self.reads.extend(reads)

    def end_tracks(self, source, ends) -> None:
        pass
