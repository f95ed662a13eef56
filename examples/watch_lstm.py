"""The true ∂L/∂h_t of your own nn.LSTM: train a small classifier a little, then look inside.

    python examples/watch_lstm.py [OUT_DIR]

The task needs memory: the class is the sign of the first input's first channel,
read only at the last of T = 40 steps (a lag of 39). The script trains for 30
steps as any user would (watch is not needed for that), then measures
the gradient through time of one batch with gradlab.watch, prints its summary
and writes OUT_DIR/grad_profile.png (default: the current directory).
"""

import sys
from pathlib import Path

import torch
from torch import nn

import gradlab

T, FEATURES, HIDDEN = 40, 4, 16


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, x):  # x: (B, T, FEATURES)
        out, _ = self.lstm(x)
        return self.head(out[:, -1])  # (B, 2), from the last step only


def batch(gen, size=32):
    x = torch.randn(size, T, FEATURES, generator=gen)
    return x, (x[:, 0, 0] > 0).long()  # the label is decided at step 0


def main(out_dir: Path):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        x, y = batch(gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    x, y = batch(gen, 128)
    optimizer.zero_grad()
    with gradlab.watch(model.lstm, lag=T - 1) as probe:  # the dependency: step 0, T - 1 steps back
        nn.functional.cross_entropy(model(x), y).backward()
    profile = probe.profile  # (2, T): layers × steps, Σ_b ‖∂L/∂h_t‖
    print(f"profile {profile.shape}: at the last step {profile[0, -1]:.3g}, at step 0 {profile[0, 0]:.3g}")
    for key, value in probe.summary().items():
        print(f"  {key}: {value}")
    print(probe.plot(out_dir / "grad_profile.png"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
