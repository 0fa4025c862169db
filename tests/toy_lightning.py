"""A toy regression task used to exercise the generic training entry point (not a model of the suite)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class ToyDataModule(L.LightningDataModule):
    """`y = x @ w*` with fixed random `w*`: 256 training and 64 validation samples."""

    def __init__(self, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(8, 1, generator=g)
        x = torch.randn(320, 8, generator=g)
        self.train_set = TensorDataset(x[:256], x[:256] @ w)
        self.val_set = TensorDataset(x[256:], x[256:] @ w)
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers)


class ToyModule(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(8, 1)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
