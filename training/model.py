"""PlateNet: a small CRNN for plate crops, read with CTC over the plate alphabet.

Grey input of INPUT_HEIGHT x INPUT_WIDTH (every crop is stretched to it, as
`anpr.ocr.prepare_plate` does at inference). Convolutions bring the height to one
column of features per 4 input pixels of width; a bidirectional LSTM reads the columns
both ways, so a character that spans columns, or a second line's characters, can be
placed in reading order; a linear layer gives each column's class scores (class 0 the
CTC blank, then `anpr.plates.PLATE_ALPHABET`).
"""

from __future__ import annotations

import torch
from torch import nn

from anpr.plates import PLATE_ALPHABET

CLASSES = 1 + len(PLATE_ALPHABET)


def _block(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]


class PlateNet(nn.Module):
    def __init__(self, width: int = 1) -> None:
        super().__init__()
        c = [32 * width, 64 * width, 96 * width, 128 * width]
        self.features = nn.Sequential(
            *_block(1, c[0]),
            nn.MaxPool2d(2),  # 24 x W/2
            *_block(c[0], c[1]),
            nn.MaxPool2d(2),  # 12 x W/4
            *_block(c[1], c[2]),
            *_block(c[2], c[2]),
            nn.MaxPool2d((2, 1)),  # 6 x W/4
            *_block(c[2], c[3]),
            *_block(c[3], c[3]),
            nn.MaxPool2d((2, 1)),  # 3 x W/4
            nn.Conv2d(c[3], 192, (3, 1), bias=False),  # 1 x W/4: the whole height into channels
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
        )
        self.sequence = nn.LSTM(192, 96, bidirectional=True, batch_first=True)
        self.classify = nn.Linear(192, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1] -> (N, T, CLASSES) log-probabilities."""
        columns = self.features(images).squeeze(2).transpose(1, 2)  # N, T, C
        sequence, _ = self.sequence(columns)
        return self.classify(sequence).log_softmax(dim=2)
