"""Train one registered model: AdamW with a one-cycle schedule, early stopping on the
validation loss, the best epoch's weights kept, the test split scored once at the end."""

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from .data import Dataset, Split
from .models.common import TrainConfig, to_probabilities


@dataclass
class TrainResult:
    model: nn.Module  # best validation epoch's weights, on the CPU, in eval mode
    history: list[dict] = field(default_factory=list)  # one row of losses/accuracies per epoch
    best_epoch: int = 0  # 1-based epoch whose weights were kept
    stopped_early: bool = False
    test_loss: float = float("nan")
    test_accuracy: float = float("nan")
    wall_time_s: float = 0.0
    device: str = "cpu"


def select_device(requested: str = "auto") -> torch.device:
    """'auto' is CUDA when a GPU is present, else the CPU; 'cuda' without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    return torch.device(requested)


def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
    """BCEWithLogits for one binary logit, cross-entropy for C logits: logits in, never probs."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return F.cross_entropy(logits, y)


def correct(logits: Tensor, y: Tensor) -> int:
    """How many rows' most probable label is right (the rule the service applies)."""
    return int((to_probabilities(logits).argmax(dim=1) == y).sum())


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    max_batches: int | None = None,
) -> tuple[float, float]:
    """One pass over the training batches; returns (mean loss, accuracy) over what it saw."""
    model.train()
    total_loss, hits, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(loader):
        if max_batches is not None and step >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)  # gradients accumulate unless cleared
        logits = model.logits(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        hits += correct(logits.detach(), y)
        seen += len(y)
    return total_loss / seen, hits / seen


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    """(loss, accuracy) of the whole split in one batch: the splits are small."""
    model.eval()  # BatchNorm uses its running statistics
    x, y = split.x.to(device), split.y.to(device)
    logits = model.logits(x)
    return loss_fn(logits, y).item(), correct(logits, y) / len(y)


def fit(
    name: str,
    module: type[nn.Module],
    cfg: TrainConfig,
    dataset: Dataset,
    device: torch.device,
    max_batches: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `module(cfg)` on `dataset`, keeping the epoch with the lowest validation loss."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = module(cfg)
    model.standardize.fit(dataset.train.x)
    model.to(device)

    shuffle = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        TensorDataset(dataset.train.x, dataset.train.y),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=shuffle,
    )
    steps = min(len(loader), max_batches or len(loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps
    )

    result = TrainResult(model=model, device=str(device))
    best_loss, best_state = float("inf"), None
    # mininterval keeps a piped log (CI) to a line a second instead of one per epoch.
    epochs = tqdm(
        range(1, cfg.epochs + 1),
        desc=f"train {name}",
        unit="epoch",
        mininterval=1.0,
        disable=not progress,
    )
    for epoch in epochs:
        lr = scheduler.get_last_lr()[0]
        train_loss, train_acc = train_one_epoch(
            model, loader, optimizer, scheduler, device, max_batches
        )
        val_loss, val_acc = evaluate(model, dataset.val, device)
        result.history.append(
            dict(
                epoch=epoch,
                lr=lr,
                train_loss=train_loss,
                train_accuracy=train_acc,
                val_loss=val_loss,
                val_accuracy=val_acc,
            )
        )
        epochs.set_postfix(
            loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}"
        )
        if val_loss < best_loss:
            best_loss, result.best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - result.best_epoch >= cfg.patience:
            result.stopped_early = True
            break
    epochs.close()

    model.load_state_dict(best_state)
    result.test_loss, result.test_accuracy = evaluate(model, dataset.test, device)
    result.model = model.cpu().eval()
    result.wall_time_s = time.perf_counter() - started
    return result
