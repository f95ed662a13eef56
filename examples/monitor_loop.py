"""A GradientMonitor in an ordinary training loop: pre-clip norms, a suggested clip, spikes, a verdict.

    python examples/monitor_loop.py

A GRU regressor trained with SGD. After every backward the monitor records the
pre-clip global norm and each submodule's (``gru``, ``head``); once it has 20
steps of history the loop clips at the monitor's suggested threshold (the median
norm so far, as a gradlab run suggests it). At the end it prints the verdict
(``exploding`` if any step spiked to 50x the running median or was non-finite,
else ``not exploding``: the norms alone cannot tell whether the gradient vanishes),
the spikes and the last rows of the monitor's DataFrame.
"""

import torch
from torch import nn

import gradlab


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(2, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x):  # x: (T, B, 2)
        return self.head(self.gru(x)[0][-1])  # (B, 1)


def main():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    monitor = gradlab.GradientMonitor(model)  # groups: gru, head
    for step in range(100):
        x = torch.rand(20, 16, 2, generator=gen)
        y = x[:3, :, 0].sum(dim=0, keepdim=True).T  # (B, 1): the sum of the first three values
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        monitor.step(loss)  # before clipping: the norm clipping acts on
        if step >= 20:
            nn.utils.clip_grad_norm_(model.parameters(), monitor.suggested_clip())
        optimizer.step()
    print(f"verdict: {monitor.verdict()}; spikes at steps {monitor.spikes()}; "
          f"suggested clip {monitor.suggested_clip():.3g}")
    print(monitor.frame().tail(3).to_string(index=False))


if __name__ == "__main__":
    main()
