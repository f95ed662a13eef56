"""The defaults of every config key: one dataclass per component; a config file overrides only what differs.

Read by ``gradlab.config`` (which checks and resolves configs against them), and by the model and the
training loop for what a resolved config leaves unsaid; this module imports nothing heavy, so each
of those can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradlab.diagnostics import Thresholds


@dataclass
class TaskConfig:
    name: str = "adding"        # a key of gradlab.tasks.TASKS
    length: int = 50            # T: the dependency length (copy: the delay); a task may have its own (digits: 64)
    eval_size: int = 1000       # sequences in the fixed held-out evaluation set
    variant: str | None = None  # a source variant, a key of gradlab.tasks.VARIANTS[name]; None = the task itself
    window: int | None = None   # k: hide every input more than k steps before the readout (gradlab.task.hide);
    #                             None = the whole sequence. A grid over it measures the data's reach (gradlab.reach)


@dataclass
class ModelConfig:
    cell: str = "vanilla"       # a key of gradlab.cells.CELLS
    hidden: int = 64
    nonlinearity: str | None = None  # orthogonal cell only: tanh | relu (default tanh)
    skip: int = 10              # skip cell: h_t also reads h[t-skip]
    engine: str = "scan"        # scan (hand-written BPTT) | autograd (unrolled reference)
    layers: int = 1             # recurrent layers of the cell, stacked: layer l's states are layer l+1's inputs
    init: str | None = None     # None = the cell's own; henaff (orthogonal cell): 2x2 rotation blocks
    constrain: bool = False     # orthogonal cell: keep U orthogonal through training (U = B·exp(A))
    forget_bias: float | str | None = None  # lstm, gru: None = torch's init; a number; chrono


@dataclass
class TrainConfig:
    steps: int = 1000           # training batches
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    clip: str | dict = "none"   # a key of gradlab.remedies.CLIPS, or {kind: norm, max_norm: 1.0}
    tbptt: int | dict | None = None  # None = full BPTT; k = detach every k steps, update per chunk;
    #                                  {k1, k2}: update every k1 steps, back-propagating k2 >= k1 steps
    eval_every: int = 100
    log_every: int = 1          # metrics.csv keeps every k-th training step (and every evaluation)
    on_nonfinite: str = "skip"  # skip the update | stop the run, marked diverged
    omega: float = 0.0          # α of Pascanu's Ω regulariser (Pascanu et al. 2013 suggest 2-4); 0 = off
    weight_decay: float = 0.0   # λ of L2 on the input and recurrent weight matrices; 0 = off


@dataclass
class Config:
    name: str = "experiment"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: Thresholds = field(default_factory=Thresholds)
    seeds: list = field(default_factory=lambda: [0])
    grid: dict = field(default_factory=dict)
    device: str = "cpu"         # cpu | cuda | cuda:N
    dtype: str = "float32"      # float32 | float64
    threads: int = 1            # torch threads per run
