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


# --- the plate reader: EasyOCR's english_g2 recogniser, fine-tuned, reading two rows ------

# english_g2's classes after its CTC blank (easyocr.config, "english_g2"): the head of the
# plate reader starts from the rows of these that are plate characters.
G2_CHARACTERS = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class PlateReader(nn.Module):
    """EasyOCR's english_g2 CRNN (VGG features, two BiLSTMs) reading the whole plate crop.

    A one-line reader pools the feature map's height to one row, which squashes the two
    rows of a square plate into each other. Here the height is pooled to two bands, top
    and bottom, and the columns of the top band are read before those of the bottom: a
    two-row plate comes out top row then bottom row, and a one-row plate, which fills
    both bands, is emitted once (CTC training decides where). The convolutions and LSTMs
    start from english_g2's weights, the 37-class head from its rows for A-Z and 0-9.
    """

    def __init__(self, g2_state: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        from easyocr.model.vgg_model import Model

        g2 = Model(input_channel=1, output_channel=256, hidden_size=256, num_class=1 + len(G2_CHARACTERS))
        if g2_state is not None:
            g2.load_state_dict({k.removeprefix("module."): v for k, v in g2_state.items()})
        self.features = g2.FeatureExtraction
        self.sequence = g2.SequenceModeling
        self.classify = nn.Linear(256, CLASSES)
        if g2_state is not None:
            rows = [0] + [1 + G2_CHARACTERS.index(ch) for ch in PLATE_ALPHABET]
            with torch.no_grad():
                self.classify.weight.copy_(g2.Prediction.weight[rows])
                self.classify.bias.copy_(g2.Prediction.bias[rows])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1] -> (N, 2T, CLASSES) log-probabilities, top band's T columns first."""
        features = self.features(images)  # N, C, h, T; h is 4 for 80 px of input height
        bands = features.unflatten(2, (2, -1)).mean(3)  # N, C, 2, T: the mean of the top and bottom halves
        columns = bands.permute(0, 2, 3, 1).flatten(1, 2)  # N, 2T, C: top band, then bottom band
        return self.classify(self.sequence(columns)).log_softmax(dim=2)
