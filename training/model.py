"""PlateNet: a small CRNN for plate crops, read with CTC over the plate alphabet.

Grey input of INPUT_HEIGHT x INPUT_WIDTH (every crop is stretched to it, as
`anpr.reading.ocr.prepare_plate` does at inference). Convolutions bring the height to one
column of features per 4 input pixels of width; a bidirectional LSTM reads the columns
both ways, so a character that spans columns, or a second line's characters, can be
placed in reading order; a linear layer gives each column's class scores (class 0 the
CTC blank, then `anpr.reading.plates.PLATE_ALPHABET`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anpr.reading.plates import PLATE_ALPHABET

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


def load_exported(network: PlateReader, path: Path) -> None:
    """Set a plate reader's weights from its ONNX export (`training.train.export_onnx`).

    A second stage can then start from a published model (`models/platereader.onnx`) when
    the first stage's checkpoint is not at hand. The export folds each BatchNorm into the
    convolution before it, and its statistics cannot be taken apart again: the fold stays in
    the convolution and the BatchNorm becomes an identity plus the folded bias. That is exact
    while the BatchNorm uses its running statistics, so a stage started from an export keeps
    them frozen (`freeze_batch_norm`). ONNX orders an LSTM's gates i, o, f, c; PyTorch i, f, g, o.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {item.name: torch.from_numpy(numpy_helper.to_array(item).copy()) for item in graph.initializer}
    state = {name.removeprefix("network."): value for name, value in weights.items() if name.startswith("network.")}
    nodes = {kind: [n for n in graph.node if n.op_type == kind] for kind in ("Conv", "LSTM", "MatMul")}
    layers = list(network.features.ConvNet)
    convolutions = [(i, m) for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    if len(convolutions) != len(nodes["Conv"]):
        raise ValueError(f"{path}: {len(nodes['Conv'])} convolutions, a plate reader has {len(convolutions)}")
    for (index, conv), node in zip(convolutions, nodes["Conv"], strict=True):
        prefix = f"features.ConvNet.{index}"
        state[f"{prefix}.weight"] = weights[node.input[1]]
        norm = layers[index + 1] if index + 1 < len(layers) else None
        if isinstance(norm, nn.BatchNorm2d):
            after = f"features.ConvNet.{index + 1}"
            state[f"{after}.weight"] = torch.ones(norm.num_features)
            state[f"{after}.bias"] = weights[node.input[2]]
            state[f"{after}.running_mean"] = torch.zeros(norm.num_features)
            state[f"{after}.running_var"] = torch.full((norm.num_features,), 1.0 - norm.eps)
            state[f"{after}.num_batches_tracked"] = torch.tensor(0)
        elif conv.bias is not None:
            state[f"{prefix}.bias"] = weights[node.input[2]]
    gates = [0, 2, 3, 1]  # PyTorch's i, f, g, o taken from ONNX's i, o, f, c

    def reorder(matrix: torch.Tensor) -> torch.Tensor:
        return torch.cat([matrix.chunk(4)[g] for g in gates])

    for block, node in enumerate(nodes["LSTM"]):
        w, r, b = (weights[name] for name in node.input[1:4])
        for direction, suffix in enumerate(("", "_reverse")):
            prefix = f"sequence.{block}.rnn"
            state[f"{prefix}.weight_ih_l0{suffix}"] = reorder(w[direction])
            state[f"{prefix}.weight_hh_l0{suffix}"] = reorder(r[direction])
            state[f"{prefix}.bias_ih_l0{suffix}"] = reorder(b[direction].chunk(2)[0])
            state[f"{prefix}.bias_hh_l0{suffix}"] = reorder(b[direction].chunk(2)[1])
    linears = ["sequence.0.linear", "sequence.1.linear", "classify"]
    for name, node in zip(linears, nodes["MatMul"], strict=True):
        state[f"{name}.weight"] = weights[node.input[1]].T.contiguous()
    network.load_state_dict(state)


def freeze_batch_norm(network: nn.Module) -> None:
    """Keep every BatchNorm on its running statistics while the rest trains."""
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
